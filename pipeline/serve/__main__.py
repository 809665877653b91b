"""``python -m pipeline.serve``: serve a bundle, export a Triton repository, smoke-test a server.

    python -m pipeline.serve BUNDLE [--host 127.0.0.1] [--port 8000] [--metrics-port N]
    python -m pipeline.serve REPO_DIR ...                  # an exported repository, as it is
    python -m pipeline.serve BUNDLE --ray [--replicas N]
    python -m pipeline.serve export-triton BUNDLE REPO_DIR [--name NAME] [--instances N] [--gpus 0,1]
    python -m pipeline.serve check URL BUNDLE [--model NAME]
    python -m pipeline.serve tune BUNDLE --p99-ms 10 [--max-batch 8,32] [--instances 1,2] ...

Errors are one line on stderr; exit codes: 0 done, 1 failed (a refused bundle, a server that
never became ready, a failed check), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from pipeline.errors import PipelineError
from pipeline.signals import clean_stop

#: Top-level modules that the serve extra brings (Triton's client, its protobuf schema, metrics).
SERVE_EXTRA = {"tritonclient", "google", "grpc", "prometheus_client", "pytriton"}


def _gpus(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus: expected indices like 0,1, got {text!r}") from None


def export_main(argv: Sequence[str]) -> int:
    """``export-triton BUNDLE REPO_DIR``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve export-triton")
    parser.add_argument("bundle", type=Path, help="bundle directory, .tar or .tar.gz")
    parser.add_argument("repository", type=Path, help="Triton model repository to write into")
    parser.add_argument("--name", help="model name in the repository (default: the bundle's model name)")
    parser.add_argument("--instances", type=int, default=1, help="model instances per device (default 1)")
    parser.add_argument("--gpus", type=_gpus, default=(), help="GPU indices for a GPU bundle (default: all)")
    args = parser.parse_args(argv)
    from pipeline.serve.repository import export_triton

    exported = export_triton(
        args.bundle,
        args.repository,
        model_name=args.name,
        instances_per_device=args.instances,
        gpus=args.gpus,
    )
    print(f"model repository: {exported.repository}")
    print(f"model: {exported.model_dir}")
    print(exported.config.to_pbtxt(), end="")
    return 0


def check_main(argv: Sequence[str]) -> int:
    """``check URL BUNDLE``: the bundle's golden sets through a running server."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve check")
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("bundle", type=Path, help="the bundle the server serves")
    parser.add_argument("--model", help="model name on the server (default: the bundle's)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args(argv)
    from pipeline.serve.client import check_server

    result = check_server(args.url, args.bundle, model=args.model, timeout_s=args.timeout)
    print(result.summary())
    return 0 if result.passed else 1


def _items(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _numbers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _items(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,8, got {text!r}") from None


def tune_main(argv: Sequence[str]) -> int:
    """``tune BUNDLE --p99-ms X``: the configuration with the most throughput under the target."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve tune")
    parser.add_argument("bundle", type=Path, help="bundle directory, .tar or .tar.gz")
    parser.add_argument("--p99-ms", type=float, required=True, help="p99 latency target in ms")
    parser.add_argument("--max-batch", type=_numbers, default=(), help="max batch sizes (default: max/4,max)")
    parser.add_argument("--queue-delay-us", type=_numbers, default=(0, 1000), help="batcher delays (0,1000)")
    parser.add_argument("--instances", type=_numbers, default=(1, 2), help="instances per device (1,2)")
    parser.add_argument("--policies", type=_items, default=("recorded",), help="runtime presets (recorded)")
    parser.add_argument(
        "--shapes", type=_items, default=(), help="golden sets to send (opt, and max if dynamic)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per level (3)")
    parser.add_argument("--max-concurrency", type=int, default=64, help="highest concurrency tried (64)")
    parser.add_argument("--outputs", type=_items, default=(), help="outputs to ask for (default: all)")
    parser.add_argument("--client-processes", type=int, default=1, help="load generator processes (1)")
    parser.add_argument("--out", type=Path, help="output directory (default: artifacts/tune/<bundle name>)")
    args = parser.parse_args(argv)
    from pipeline.serve.tune import REPOSITORY_DIR, RESULTS_FILE, TuneGrid, TuneSettings, tune

    policies = tuple(None if policy == "recorded" else policy for policy in args.policies)
    settings = TuneSettings(
        target_p99_ms=args.p99_ms,
        grid=TuneGrid(args.max_batch, args.queue_delay_us, args.instances, policies),
        shapes=args.shapes,
        seconds=args.seconds,
        max_concurrency=args.max_concurrency,
        outputs=args.outputs,
        client_processes=args.client_processes,
    )
    out = args.out or Path("artifacts") / "tune" / args.bundle.name.split(".tar")[0]
    with clean_stop(f"server stopped; what was measured is in {out / RESULTS_FILE}"):
        report = tune(
            args.bundle, settings, out, progress=lambda line: print(line, file=sys.stderr, flush=True)
        )
    print(report.table())
    print(f"results: {out}")
    print(f"reproduce: {report.command}")
    if report.winner is None:
        return 1
    print(f"serve the winner: python -m pipeline.serve {out / REPOSITORY_DIR}")
    return 0


def serve_main(argv: Sequence[str]) -> int:
    """``BUNDLE``: serve it until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.serve",
        description="Serve a bundle over KServe v2 HTTP (Triton, or Ray Serve with --ray). "
        "Other commands: export-triton, check, tune.",
    )
    parser.add_argument("bundle", type=Path, help="bundle (directory, .tar, .tar.gz) or exported repository")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0: any free port)")
    parser.add_argument("--metrics-port", type=int, help="Triton metrics port (default: HTTP port + 2)")
    parser.add_argument("--instances", type=int, default=1, help="model instances per device (Triton)")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for ready")
    parser.add_argument("--ray", action="store_true", help="serve on Ray Serve instead of Triton")
    parser.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")
    args = parser.parse_args(argv)
    if args.ray:
        if not os.environ.get("RAY_ADDRESS"):
            # A local instance stays on the loopback: with clustering off, Ray binds its own
            # services (GCS, raylet, agents) to 127.0.0.1. Ray reads it at import.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            from pipeline.serve.ray_app import serve_on_ray
        except ModuleNotFoundError as missing:
            raise PipelineError(
                f"--ray needs Ray Serve ({missing.name} is not installed): pip install 'trt-pipeline[ray]'"
            ) from None
        return serve_on_ray(args.bundle, host=args.host, port=args.port, replicas=args.replicas)
    return _serve_triton(args)


def _serve_triton(args: argparse.Namespace) -> int:
    from pipeline.serve.repository import export_triton, models_in
    from pipeline.serve.server import TritonServer, metadata_summary

    stopping = False

    with tempfile.TemporaryDirectory(prefix="pipeline-serve-") as scratch:
        workdir = Path(scratch)
        repository = args.bundle if args.bundle.is_dir() and models_in(args.bundle) else None
        if repository is None:
            repository = workdir / "models"
            export_triton(args.bundle, repository, instances_per_device=args.instances)
        models = models_in(repository)
        server = TritonServer(
            repository,
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            workdir=workdir,
            log=sys.stderr,
        )

        def on_signal(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True
            if server.process is not None and server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)  # Triton lets in-flight requests finish

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            server.start(timeout_s=args.ready_timeout, should_stop=lambda: stopping)
            print(f"url: {server.url}", flush=True)
            print(f"metrics: {server.metrics_url}", flush=True)
            for model in models:
                print(f"model {model}: {metadata_summary(server.metadata(model))}", flush=True)
            print(f"ready: {server.url}/v2/health/ready (Ctrl-C or SIGTERM stops)", flush=True)
            assert server.process is not None
            server.process.wait()
        finally:
            code = server.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if stopping:
            print(f"stopped (tritonserver exit code {code})", file=sys.stderr)
            return 0
        print(f"error: tritonserver exited with code {code}: {server.reason()}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"export-triton": export_main, "check": check_main, "tune": tune_main}
    try:
        if args and args[0] in commands:
            return commands[args[0]](args[1:])
        return serve_main(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as missing:
        if (missing.name or "").partition(".")[0] not in SERVE_EXTRA:
            raise
        print(
            f"error: serving needs the serve extra ({missing.name} is not installed): "
            "pip install 'trt-pipeline[serve]'",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    # Serving stops on SIGTERM or Ctrl-C by design (in-flight requests finish, exit 0); before the
    # server is up, either stops the start-up cleanly (130 / 143).
    with clean_stop("stopped before the server was ready"):
        sys.exit(main())
