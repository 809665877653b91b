"""Running the real ``tritonserver`` that the ``nvidia-pytriton`` wheel ships (the ``serve`` extra).

The wheel holds the server binary, the Python backend and one backend stub per Python version;
the stub must match this interpreter, so a backend directory is assembled per server with the
right one. The stub embeds this interpreter's libpython (its directory goes on
``LD_LIBRARY_PATH``) and gets this process's ``sys.path`` through ``PIPELINE_SERVE_SYS_PATH``
(read by ``model.py``), so the backend imports ``pipeline``, torch and numpy from this
environment. The server runs in its own process group: stopping it reaches the backend stubs too.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline.errors import PipelineError
from pipeline.serve.client import ServeClient

#: Directories put first on the Python backend's ``sys.path`` only (``os.pathsep``-separated).
BACKEND_PATH_VARIABLE = "PIPELINE_SERVE_BACKEND_PATH"
#: Seconds Triton waits for in-flight requests after SIGTERM before it stops anyway.
EXIT_TIMEOUT_S = 20
#: Extra seconds this process gives Triton to exit after that, before killing its process group.
KILL_GRACE_S = 8


class ServeError(PipelineError):
    """The server could not be started, or stopped before its model was ready."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the ``nvidia-pytriton`` wheel keeps Triton's files."""

    binary: Path
    python_backend: Path
    stub: Path
    libraries: Path

    @classmethod
    def find(cls) -> TritonInstall:
        """The installed server (where pytriton says it keeps it), or :class:`ServeError` saying
        how to install it."""
        try:
            from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path
        except ModuleNotFoundError:
            raise ServeError(
                "tritonserver is not installed: pip install 'trt-pipeline[serve]' (the nvidia-pytriton wheel)"
            ) from None
        server = get_root_module_path() / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        libraries = get_libs_path()
        if not libraries.is_dir():
            # pytriton takes a wheel installed outside site-packages (pip install --target, a
            # directory on PYTHONPATH) for a source checkout and names the checkout's directory;
            # the wheel's libraries are beside the package.
            libraries = get_root_module_path().parent / "nvidia_pytriton.libs"
        install = cls(
            server / "bin" / "tritonserver", server / "backends" / "python", get_stub_path(version), libraries
        )
        for path in (install.binary, install.python_backend, install.stub, install.libraries):
            if not path.exists():
                raise ServeError(f"{path}: missing from the nvidia-pytriton install (Python {version})")
        return install

    def backend_directory(self, workdir: Path) -> Path:
        """A backend directory whose Python backend has the stub of this interpreter's version."""
        backends = workdir / "backends"
        python = backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for item in self.python_backend.iterdir():
            if item.is_file():
                shutil.copy2(item, python / item.name)
        shutil.copy2(self.stub, python / self.stub.name)
        return backends


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _gpu_visible() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _local(host: str) -> str:
    # A server listening on every address is reached locally through the loopback.
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


@dataclass
class TritonServer:
    """One ``tritonserver`` process serving ``repository`` on ``host:port``.

    ``start`` returns when every model is ready (its golden check passed) and raises
    :class:`ServeError` with the server's reason if it exits first; ``stop`` sends SIGTERM,
    so in-flight requests finish, and kills what is left of the process group afterwards.
    """

    repository: Path
    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int | None = None
    workdir: Path | None = None
    log: IO[str] | None = None
    #: Load no model at start; models are loaded (with a configuration each time) through the API.
    explicit_models: bool = False
    process: subprocess.Popen[str] | None = None
    log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=400))
    _reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP (KServe v2) endpoint."""
        return f"http://{_local(self.host)}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Triton's Prometheus metrics."""
        return f"http://{_local(self.host)}:{self.metrics_port}/metrics"

    def command(self, backends: Path) -> list[str]:
        """The tritonserver command line."""
        install = TritonInstall.find()
        return [
            str(install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--http-port={self.port}",
            "--allow-grpc=false",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            # GPU metrics need NVML: only where a GPU is visible (the launcher imports torch anyway).
            f"--allow-gpu-metrics={'true' if _gpu_visible() else 'false'}",
            "--strict-readiness=true",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            *(["--model-control-mode=explicit"] if self.explicit_models else []),
            # Unique shared-memory names: several servers on one host must not share regions.
            f"--backend-config=python,shm-region-prefix-name=pipeline_serve_{uuid.uuid4().hex[:12]}",
        ]

    def environment(self) -> dict[str, str]:
        """This process's environment plus what the Python backend stub needs from it."""
        install = TritonInstall.find()
        env = dict(os.environ)
        libdirs = [str(sysconfig.get_config_var("LIBDIR") or ""), str(install.libraries)]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [d for d in libdirs if d] + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else [])
        )
        # BACKEND_PATH_VARIABLE: directories the backend alone puts first, e.g. a numpy < 2 for the
        # stub where this environment needs numpy 2 for other work (the GPU test host does).
        backend_first = [entry for entry in env.get(BACKEND_PATH_VARIABLE, "").split(os.pathsep) if entry]
        env["PIPELINE_SERVE_SYS_PATH"] = os.pathsep.join(
            backend_first + [entry for entry in sys.path if entry]
        )
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self, timeout_s: float = 300.0, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Start the server and wait until it reports ready (bounded by ``timeout_s``)."""
        if self.port == 0:
            self.port = free_port(_local(self.host))
        if self.metrics_port is None:
            self.metrics_port = self.port + 2 if self.port < 65533 else free_port(_local(self.host))
        elif self.metrics_port == 0:
            self.metrics_port = free_port(_local(self.host))
        assert self.workdir is not None, "TritonServer.workdir must be set before start()"
        backends = TritonInstall.find().backend_directory(self.workdir)
        self.process = subprocess.Popen(
            self.command(backends),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.environment(),
            start_new_session=True,  # its own process group, so stop() reaches the backend stubs
        )
        self._reader = threading.Thread(target=self._pump_log, name="tritonserver-log", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        with ServeClient(self.url, timeout_s=2.0) as client:
            while time.monotonic() < deadline and not should_stop():
                if self.process.poll() is not None:
                    self._reader.join(timeout=5)
                    raise ServeError(
                        f"tritonserver exited with code {self.process.returncode}: {self.reason()}"
                    )
                if client.ready():
                    return
                time.sleep(0.25)
        self.stop()
        if should_stop():
            raise ServeError("stopped before the model was ready")
        raise ServeError(f"not ready after {timeout_s:.0f} s: {self.reason()}")

    def reason(self) -> str:
        """The server's own words for why a model is not ready, on one line: the backend's
        refusal of the bundle if it logged one, else Triton's error lines."""
        for line in self.log_tail:
            if "bundle refused" in line:
                # Triton logs the message quoted, with escaped newlines and the stub's "At:" trace.
                return re.split(r'\\n|"| \|', line[line.index("bundle refused") :])[0].strip()
        lines = [line for line in self.log_tail if "failed to load" in line or line.startswith("error:")]
        if not lines:
            lines = [line for line in self.log_tail if line[:1] == "E"] or list(self.log_tail)[-3:]
        return " | ".join(line.strip() for line in lines[-3:]) or "no log output"

    def metric(self, name: str, model: str) -> float:
        """One of Triton's Prometheus counters for ``model`` (e.g. ``nv_inference_exec_count``)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        # By family: the parser names a counter's samples with a ``_total`` suffix.
        for family in text_string_to_metric_families(text):
            for sample in family.samples if family.name == name else ():
                if sample.labels.get("model") == model:
                    return float(sample.value)
        raise ServeError(f"{name} for model {model} is not in the server's metrics")

    def metadata(self, model: str) -> dict[str, Any]:
        """The model's KServe v2 metadata."""
        with ServeClient(self.url) as client:
            return client.metadata(model)

    def stop(self, grace_s: float = EXIT_TIMEOUT_S + KILL_GRACE_S) -> int | None:
        """SIGTERM (in-flight requests finish), wait up to ``grace_s``, then kill the process
        group; returns the server's exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace_s)
        # Backend stubs left by a server that died or hung: they share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return process.returncode

    def _pump_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.log_tail.append(line)
            if self.log is not None:
                self.log.write(line)
                self.log.flush()


def metadata_summary(metadata: dict[str, Any]) -> str:
    """v2 model metadata as one JSON line."""
    return json.dumps(metadata, sort_keys=True)
