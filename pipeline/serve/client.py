"""The KServe v2 client (Triton's own ``tritonclient``) and the post-deploy smoke test.

``check_server(url, bundle)`` sends every golden set of the bundle (opt, and min/max/odd for
dynamic models) to a running server (Triton or Ray Serve: the same routes) and compares the
answers with the golden outputs within the bundle's own tolerance (a set with more rows than the
served model's ``max_batch_size`` goes in several requests); ``python -m pipeline.serve
check URL BUNDLE`` is the same from a shell.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from pipeline.errors import PipelineError


class RequestError(PipelineError):
    """A request the server refused (``status`` 400: bad input) or could not answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class ServeClient:
    """KServe v2 over HTTP to one server (``url``: ``http://host:port[/prefix]``), through
    ``tritonclient.http``.

    A tritonclient client is not thread-safe: each thread gets its own, which keeps its
    connection open between requests. Close it (``close()``, or use the client as a context
    manager) when done: Triton waits for every open connection, up to its exit timeout, before
    it stops.
    """

    url: str
    timeout_s: float = 60.0
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def ready(self) -> bool:
        """True when the server reports every model ready (``/v2/health/ready``)."""
        try:
            return bool(self._call(lambda client: client.is_server_ready()))
        except (OSError, RequestError):
            return False

    def metadata(self, model: str) -> dict[str, Any]:
        """The model's v2 metadata: name, versions, platform, inputs and outputs."""
        return dict(self._call(lambda client: client.get_model_metadata(model)))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        binary: bool = False,
        outputs: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``; its outputs by name (``outputs``: only those).
        :class:`RequestError` if refused.

        ``binary``: tensors travel as raw bytes (Triton's binary tensor data extension), what a
        large tensor, e.g. BERT's hidden states, needs and the only way Triton answers FP16.
        """
        # Native byte order: tritonclient knows no datatype of a big-endian array.
        arrays = [np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("=")) for v in inputs.values()]
        requested = [
            triton_http.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            for name, value in zip(inputs, arrays, strict=True)
        ]
        for tensor, value in zip(requested, arrays, strict=True):
            tensor.set_data_from_numpy(value, binary_data=binary)
        names = outputs if outputs is not None or binary else self._output_names(model)
        wanted = (
            None
            if names is None
            else [triton_http.InferRequestedOutput(n, binary_data=binary) for n in names]
        )
        result = self._call(lambda client: client.infer(model, requested, outputs=wanted))
        return {entry["name"]: result.as_numpy(entry["name"]) for entry in result.get_response()["outputs"]}

    def max_batch_size(self, model: str) -> int | None:
        """The most rows one request to ``model`` may hold (Triton's ``max_batch_size``; 0: the
        model does not batch), or None where the server does not say (Ray Serve has no
        configuration route)."""
        try:
            config = self._call(lambda client: client.get_model_config(model))
        except (RequestError, OSError):
            return None
        value = config.get("max_batch_size") if isinstance(config, dict) else None
        return value if isinstance(value, int) else None

    def load_model(self, model: str, config_json: str | None = None) -> None:
        """Load (or load again) ``model``, with ``config_json`` instead of its ``config.pbtxt``
        when given: Triton's model-control API (a server in explicit model-control mode)."""
        self._call(lambda client: client.load_model(model, config=config_json))

    def unload_model(self, model: str) -> None:
        """Unload ``model`` (Triton's model-control API)."""
        self._call(lambda client: client.unload_model(model))

    def close(self) -> None:
        """Close this thread's client and its connection, if any."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None

    def __enter__(self) -> ServeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _output_names(self, model: str) -> list[str]:
        # JSON answers must be asked for by name (tritonclient asks for all outputs in binary).
        return [str(entry["name"]) for entry in self.metadata(model)["outputs"]]

    def _client(self) -> triton_http.InferenceServerClient:
        client = getattr(self._local, "client", None)
        if client is None:
            _stops_are_not_errors()
            parts = urllib.parse.urlsplit(self.url if "://" in self.url else f"http://{self.url}")
            client = triton_http.InferenceServerClient(
                parts.netloc + parts.path.rstrip("/"),
                ssl=parts.scheme == "https",
                connection_timeout=self.timeout_s,
                network_timeout=self.timeout_s,
            )
            self._local.client = client
        return client

    def _call(self, send: Any) -> Any:
        for attempt in (1, 2):
            try:
                return send(self._client())
            except http.client.HTTPException as exc:  # geventhttpclient's: the connection broke
                self.close()
                # A kept connection the server closed while it sat idle: once more, on a new one.
                if attempt == 1 and type(exc).__name__ == "HTTPConnectionClosed":
                    continue
                raise ConnectionError(f"{self.url}: {type(exc).__name__}: {exc}") from None
            except InferenceServerException as exc:
                status = exc.status()
                code = int(status) if status and status.isdigit() else 0
                raise RequestError(code, str(exc.message())) from None
        raise AssertionError("unreachable")


def _stops_are_not_errors() -> None:
    """A Ctrl-C or SIGTERM that comes while a request waits is raised in gevent's hub (the
    client's event loop), which prints a traceback for it before it passes it on to the waiting
    code. A stop is one line: the hub is told it is no error (it is passed on all the same)."""
    import gevent

    hub = gevent.get_hub()
    if not issubclass(KeyboardInterrupt, hub.NOT_ERROR):
        hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)


@dataclass(frozen=True)
class SetCheck:
    """One golden set sent to the server and compared."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ServerCheck:
    """The smoke test's verdict: every golden set answered within the bundle's tolerance."""

    model: str
    sets: tuple[SetCheck, ...]

    @property
    def passed(self) -> bool:
        """True when every golden set passed."""
        return bool(self.sets) and all(s.passed for s in self.sets)

    def summary(self) -> str:
        """One line per set, then the verdict."""
        lines = [f"{'PASS' if s.passed else 'FAIL'} {s.name}: {s.detail}" for s in self.sets]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"{verdict}: {sum(s.passed for s in self.sets)}/{len(self.sets)} golden sets of {self.model}"
        )
        return "\n".join(lines)


def golden_requests(
    bundle: str | Path,
) -> tuple[str, dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]], Any]:
    """The bundle's model name, its golden sets as (inputs by name, outputs by name) in numpy,
    and its tolerance; the bundle is checked (sha256, signature) first."""
    from safetensors.numpy import load_file

    from pipeline.runtime import open_bundle
    from pipeline.runtime.archive import release_unpacked
    from pipeline.runtime.format import GOLDEN_NAME, golden_sets
    from pipeline.runtime.types import Tolerance
    from pipeline.serve.serving import output_name

    opened = open_bundle(bundle)
    root, manifest = opened.root, opened.manifest
    try:
        tensors = load_file(str(root / GOLDEN_NAME))
    finally:
        release_unpacked(root)
    input_names = [spec["name"] for spec in manifest.inputs]
    names = [output_name(entry, i) for i, entry in enumerate(manifest.outputs)]
    sets = golden_sets(tensors, input_names, len(names))
    requests = {
        set_name: (
            dict(zip(input_names, inputs, strict=True)),
            dict(zip(names, outputs, strict=True)),
        )
        for set_name, (inputs, outputs) in sets.items()
    }
    return manifest.model_name, requests, Tolerance(**manifest.verification["tolerance"])


def check_server(
    url: str, bundle: str | Path, model: str | None = None, timeout_s: float = 60.0
) -> ServerCheck:
    """Send each golden set of ``bundle`` to the server at ``url`` and compare the answers with
    the golden outputs within the bundle's tolerance (the operator's post-deploy smoke test)."""
    import torch

    from pipeline.runtime.verification import compare

    model_name, requests, tolerance = golden_requests(bundle)
    model = model or model_name
    checks = []
    with ServeClient(url, timeout_s=timeout_s) as client:
        limit = client.max_batch_size(model)
        for set_name, (inputs, expected) in requests.items():
            try:
                answer, sent = _infer_rows(client, model, inputs, limit)
            except (RequestError, OSError) as exc:
                checks.append(SetCheck(set_name, False, str(exc)))
                continue
            missing = [name for name in expected if name not in answer]
            if missing:
                checks.append(SetCheck(set_name, False, f"outputs missing from the answer: {missing}"))
                continue
            try:
                comparisons = compare(
                    set_name,
                    [torch.from_numpy(np.array(answer[name])) for name in expected],
                    [torch.from_numpy(np.array(value)) for value in expected.values()],
                    tolerance,
                )
            except ValueError as exc:  # another number of values than the golden output
                checks.append(SetCheck(set_name, False, str(exc)))
                continue
            worst = max(comparisons, key=lambda c: c.max_abs_error / max(c.allowed_abs_error, 1e-30))
            shapes = ", ".join(f"{name} {list(value.shape)}" for name, value in inputs.items())
            errors = f"worst max_abs={worst.max_abs_error:.3g} (allowed {worst.allowed_abs_error:.3g})"
            if sent > 1:
                errors += f"; sent as {sent} requests of <= {limit} rows (the model's max_batch_size)"
            checks.append(SetCheck(set_name, all(c.passed for c in comparisons), f"{shapes}; {errors}"))
    return ServerCheck(model, tuple(checks))


def _infer_rows(
    client: ServeClient, model: str, inputs: Mapping[str, np.ndarray], limit: int | None
) -> tuple[dict[str, np.ndarray], int]:
    """``model``'s outputs for ``inputs`` and the number of requests it took: a batching model
    whose ``max_batch_size`` is below the set's rows (what ``tune`` may choose) gets the rows in
    requests of at most ``limit``, and the answers are joined along the batch again."""
    rows = next(iter(inputs.values())).shape[0] if inputs else 0
    if not limit or rows <= limit:
        # Binary tensors: Triton answers FP16 outputs only that way, and it is exact.
        return client.infer(model, inputs, binary=True), 1
    parts = [
        client.infer(
            model, {name: value[start : start + limit] for name, value in inputs.items()}, binary=True
        )
        for start in range(0, rows, limit)
    ]
    names = [name for name in parts[0] if all(name in part for part in parts)]
    joined = {name: np.concatenate([part[name] for part in parts]) for name in names}
    return joined, len(parts)
