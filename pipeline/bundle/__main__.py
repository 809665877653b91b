"""``python -m pipeline.bundle {pack,inspect,verify,bench,coldstart,warm,keygen,sign,gc}``: bundle tools."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.bundle.coldstart import measure_cold_start
from pipeline.bundle.pack import Compression, pack_bundle, sign_path
from pipeline.config.schema import BenchConfig
from pipeline.console import console, summary_table
from pipeline.errors import BundleError, PipelineError
from pipeline.runtime.archive import release_unpacked
from pipeline.runtime.format import Manifest
from pipeline.runtime.loader import load_bundle, open_bundle, verify_loaded
from pipeline.runtime.policy import RuntimeConfig
from pipeline.runtime.tensorrt import CPP_RUNTIME, OWN_RUNNER
from pipeline.runtime.trust import SignatureCheck, generate_key_pair
from pipeline.signals import clean_stop

# What a command was asked for (the inspect table) goes to stdout, so it can be piped or saved;
# progress and errors go to stderr through ``console``.
stdout_console = Console(highlight=False, soft_wrap=True)


def inspect_rows(manifest: Manifest, signature: SignatureCheck | None = None) -> list[tuple[str, str]]:
    """The manifest as label/value rows (and the signature check, where one ran)."""
    runtime = manifest.runtime
    applied = "applied" if runtime.get("applied") else f"NOT applied: {runtime.get('reason', '')}"
    verification = manifest.verification
    rows = [
        ("bundle id", manifest.bundle_id),
        ("created", manifest.created_at),
        ("model", f"{manifest.model_name} ({manifest.precision})"),
        ("backend", f"{manifest.backend} on {manifest.device}"),
        ("runtime", f"{runtime.get('policy', {}).get('name')} ({applied})"),
        ("engines", str(manifest.engine_count)),
        ("engine runner", engine_runner_row(manifest)),
        ("runtime cache", runtime_cache_row(manifest)),
        *(
            (f"engine {e.get('attribute')}", f"{e.get('file')}, {e.get('outputs')} outputs")
            for e in manifest.engines
        ),
        ("verification", "PASS" if verification.get("passed") else "FAIL"),
        *((("signature", signature.describe()),) if signature is not None else ()),
        ("weights", json.dumps(manifest.weights, sort_keys=True)),
        ("inputs", ", ".join(_describe_input(i) for i in manifest.inputs)),
        (
            "outputs",
            ", ".join(f"{o.get('name') or o['index']} {o['shape']} {o['dtype']}" for o in manifest.outputs),
        ),
    ]
    rows += [(f"env.{k}", v) for k, v in sorted(manifest.environment.items())]
    rows += [(f"file {f.path}", f"{f.size} bytes sha256:{f.sha256[:16]}") for f in manifest.files]
    return rows


def engine_runner_row(manifest: Manifest) -> str:
    """Which runner runs the engines where the bundle was verified, and the TensorRT-RTX settings."""
    policy = RuntimeConfig.from_record(manifest.runtime.get("policy", {}))
    settings = ", ".join(f"{k}={v}" for k, v in policy.rtx_settings().items())
    if manifest.backend != "tensorrt":
        return "none (no TensorRT engines)"
    rtx = manifest.environment.get("tensorrt_build") == "tensorrt-rtx"
    runner = str(manifest.runtime.get("runner") or "")
    if not runner:  # bundles from before runners were recorded
        runner = OWN_RUNNER if manifest.runtime_cache else CPP_RUNTIME
    where = "TensorRT-RTX" if rtx else "standard TensorRT"
    return f"{runner} ({where}{'; ' + settings if settings else ''}; decided again at load: see load_report)"


def runtime_cache_row(manifest: Manifest) -> str:
    """The runtime cache the bundle ships, and the host key it applies to."""
    cache = manifest.runtime_cache
    if not cache:
        return "none"
    key = ", ".join(f"{k}={v}" for k, v in sorted(cache.get("key", {}).items()))
    return f"{cache.get('file')} for {key}"


def _describe_input(entry: dict[str, Any]) -> str:
    """``name (1, 128) int32``; dynamic dimensions as ``batch=1..32``, then the opt shape."""
    shape = entry["shape"]
    low, high = entry.get("min_shape") or shape, entry.get("max_shape") or shape
    names = entry.get("dims") or [None] * len(shape)
    sizes = [
        f"{name or f'dim{i}'}={lo}..{hi}" if lo != hi else str(opt)
        for i, (name, lo, opt, hi) in enumerate(zip(names, low, shape, high, strict=True))
    ]
    opt = f"; opt {tuple(shape)}" if low != high else ""
    return f"{entry['name']} ({', '.join(sizes)}{opt}) {entry['dtype']}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _read_key(key: str) -> bytes:
    try:
        return Path(key).read_bytes()
    except OSError as exc:
        raise BundleError(f"--key {key}: {exc.strerror or exc}") from None


def _warm(path: str, out: str | None, key: str | None, device: str | None) -> None:
    """Warm a bundle; the bundle to deploy goes to stdout, what happened to stderr."""
    from pipeline.bundle.warm import warm_bundle

    result = warm_bundle(path, out, _read_key(key) if key else None, device)
    key_text = ", ".join(f"{k}={v}" for k, v in sorted(result.cache_key.items()))
    if not result.written:
        console.print(f"{path}: its runtime cache already matches this host ({key_text}); nothing written")
    else:
        console.print(f"runtime cache: {result.cache_bytes} bytes for {key_text}")
        console.print(f"verification of the warmed copy: {result.verification}")
        console.print(f"load report: {json.dumps(result.load_engines, sort_keys=True)}")
        if not result.signed:
            console.print(
                "[yellow]unsigned[/]: hosts that require signatures refuse it "
                "(python -m pipeline.bundle sign PATH --key KEY, or warm with --key)"
            )
    print(result.path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.bundle", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="make PATH.tar (or .tar.gz) from a bundle directory")
    pack.add_argument("path")
    pack.add_argument("-o", "--output", help="archive path (default: next to the bundle)")
    pack.add_argument(
        "--compression",
        choices=[c.value for c in Compression],
        help="none (a .tar, the default: engines barely compress) or gz (default from --output's name)",
    )
    for name, text in (("inspect", "print the manifest"), ("verify", "re-run the golden check here")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("path")
        if name == "inspect":
            sub.add_argument("--json", action="store_true", help="print manifest.json as is")
    bench = commands.add_parser(
        "bench", help="time the bundle on this host (load, first call, latency, memory)"
    )
    bench.add_argument("path")
    bench.add_argument("--runtime", help="runtime preset to load with (default: the recorded one)")
    bench.add_argument("--policies", default="", help="comma-separated presets to time as well")
    bench.add_argument("--warmup", type=int, default=BenchConfig.warmup)
    bench.add_argument(
        "--warmup-seconds",
        type=float,
        default=BenchConfig.warmup_s,
        help="on a GPU, warm up at least this long",
    )
    bench.add_argument("--iterations", type=int, default=BenchConfig.iterations)
    bench.add_argument("--json", dest="json_path", help="also write the report as JSON here")
    coldstart = commands.add_parser(
        "coldstart", help="time process start to first output, one fresh process per run"
    )
    coldstart.add_argument("path")
    coldstart.add_argument("--repeats", type=int, default=3)
    coldstart.add_argument("--json", dest="json_path", help="also write the figures as JSON here")
    coldstart.add_argument(
        "--runtime-cache",
        choices=("auto", "on", "off"),
        help="replace the recorded policy's runtime_cache (off: kernels compile at load; bundle directories)",
    )
    warm = commands.add_parser(
        "warm", help="write a verified copy of a TensorRT-RTX bundle with a runtime cache for this host"
    )
    warm.add_argument("path")
    warm.add_argument(
        "--out",
        help="bundle to write (new; default: beside the source, -warm-sm<SM>; .tar/.tar.gz: an archive)",
    )
    warm.add_argument("--key", help="ed25519 private key (PEM) to sign the copy with (default: unsigned)")
    warm.add_argument("--device", help="GPU to warm for, e.g. cuda:1 (default: the current one)")
    keygen = commands.add_parser("keygen", help="make an ed25519 key pair for signing bundles")
    keygen.add_argument("private", help="private key file to write (PEM, mode 600)")
    keygen.add_argument("public", help="public key file to write (PEM): give it to hosts to trust")
    sign = commands.add_parser(
        "sign", help="sign a bundle (a directory in place; an archive written again, atomically)"
    )
    sign.add_argument("path")
    sign.add_argument("--key", required=True, help="ed25519 private key (PEM)")
    sign.add_argument("--out", help="archives: write the signed archive here instead of in place")
    gc = commands.add_parser("gc", help="remove staging directories left by builders that died")
    gc.add_argument("artifacts", nargs="?", default="artifacts")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            compression = Compression(args.compression) if args.compression else None
            print(pack_bundle(args.path, args.output, compression))
        elif args.command == "inspect":
            opened = open_bundle(args.path)
            release_unpacked(opened.root)
            if args.json:
                print(opened.manifest.to_json(), end="")
            else:
                rows = inspect_rows(opened.manifest, opened.signature)
                stdout_console.print(summary_table(rows, title=str(args.path)))
        elif args.command == "coldstart":
            figures = measure_cold_start(args.path, args.repeats, args.runtime_cache)
            rows = [(key, f"{value:.3f}") for key, value in figures["median"].items()]
            console.print(summary_table(rows, title=f"cold start (median of {args.repeats}) {args.path}"))
            if args.json_path:
                _write_json(Path(args.json_path), figures)
        elif args.command == "warm":
            _warm(args.path, args.out, args.key, args.device)
        elif args.command == "keygen":
            generate_key_pair(Path(args.private), Path(args.public))
            print(args.public)
        elif args.command == "sign":
            signed = sign_path(args.path, _read_key(args.key), args.out)
            console.print(f"signature: {signed.signature.describe()}")
            print(signed.path)
        elif args.command == "gc":
            from pipeline.bundle.store import BundleStore  # the build side's store (filelock)

            store = BundleStore(args.artifacts)
            removed_dirs = store.collect_garbage()
            for removed in removed_dirs:
                print(f"removed {removed}")
            if not removed_dirs:
                print(f"nothing to remove: no staging directory of a dead builder in {store.root}")
        elif args.command == "bench":
            settings = BenchConfig(
                warmup=args.warmup,
                warmup_s=args.warmup_seconds,
                iterations=args.iterations,
                baselines=[],
                policies=[p for p in args.policies.split(",") if p],
            )
            from pipeline.stages.bench import bench_bundle, report_rows  # the build side: only here

            bench_report = bench_bundle(args.path, args.runtime, settings)
            console.print(summary_table(report_rows(bench_report), title=f"bench {args.path}"))
            if args.json_path:
                _write_json(Path(args.json_path), bench_report.to_dict())
        else:
            loaded = load_bundle(args.path)
            try:
                report = verify_loaded(loaded)
                print(report.summary())
                print(f"signature: {loaded.signature.describe()}")
            finally:
                loaded.close()
            return 0 if report.passed else 1
    except PipelineError as error:
        console.print(f"[red]error:[/] {error}")
        return error.exit_code
    return 0


if __name__ == "__main__":
    with clean_stop("nothing written"):
        sys.exit(main())
