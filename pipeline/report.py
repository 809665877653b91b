"""``python -m pipeline.report [DIR]``: compare runtime policies across benchmarked bundles.

Reads the ``bench`` section of every bundle manifest under ``DIR`` (default ``artifacts``) and
writes ``DIR/report.md`` (a markdown table) and ``DIR/report.png`` (latency and idle memory).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.bundle.format import MANIFEST_NAME, Manifest, read_manifest
from pipeline.console import console
from pipeline.errors import BundleError

COLUMNS = [
    "model",
    "precision",
    "backend",
    "policy",
    "variant",
    "median ms",
    "p90 ms",
    "device ms",
    "vs fresh",
    "vs fresh same policy",
    "vs eager",
    "vs inductor",
    "idle MiB",
    "load s",
    "first call ms",
    "compile s",
    "serialize s",
    "bundle MB",
]


@dataclass
class Row:
    """One timed variant of one bundle."""

    cells: dict[str, str]
    median_ms: float
    idle_mib: float | None


def find_manifests(directory: Path) -> list[Manifest]:
    """Manifests of the bundles under ``directory`` that carry bench results, by name."""
    manifests = []
    for path in sorted(directory.rglob(MANIFEST_NAME)):
        if any(part.startswith(".staging-") for part in path.parts):
            continue
        try:
            manifest = read_manifest(path.parent)
        except BundleError as error:
            console.print(f"[yellow]skipped[/] {path.parent}: {error}")
            continue
        if manifest.bench:
            manifests.append(manifest)
    return manifests


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def rows_for(manifest: Manifest) -> list[Row]:
    """Table rows of one bundle: its loaded variants first, then the baselines."""
    bench = manifest.bench
    latency: dict[str, dict[str, float]] = bench["latency"]
    load = bench.get("load", {})
    idle = load.get("idle_engine_memory")
    size_mb = sum(f.size for f in manifest.files) / 1e6
    rows = []
    ordered = [name for name in latency if name.startswith("loaded")] + [
        name for name in latency if not name.startswith("loaded")
    ]
    for name in ordered:
        stats = latency[name]

        def ratio(baseline: str, stats: dict[str, float] = stats, name: str = name) -> str:
            if baseline not in latency or baseline == name:
                return ""
            return f"{stats['median_ms'] / latency[baseline]['median_ms']:.2f}x"

        is_loaded = name.startswith("loaded")
        policy = name.split(":", 1)[1] if ":" in name else bench["policy"]
        cells = {
            "model": manifest.model_name,
            "precision": manifest.precision,
            "backend": manifest.backend,
            "policy": policy if is_loaded else "",
            "variant": "loaded bundle" if is_loaded else name,
            "median ms": _fmt(stats["median_ms"]),
            "p90 ms": _fmt(stats["p90_ms"]),
            "device ms": _fmt(stats.get("device_median_ms")),
            "vs fresh": ratio("fresh"),
            "vs fresh same policy": (
                ratio(f"fresh:{policy}" if f"fresh:{policy}" in latency else "fresh") if is_loaded else ""
            ),
            "vs eager": ratio("eager"),
            "vs inductor": ratio("inductor"),
            "idle MiB": _fmt(idle / 2**20, 0) if is_loaded and name == "loaded" and idle is not None else "",
            "load s": _fmt(load.get("load_seconds"), 2) if name == "loaded" else "",
            "first call ms": _fmt(load.get("first_call_seconds", 0) * 1e3, 1) if name == "loaded" else "",
            "compile s": _fmt(manifest.timings.get("compile"), 1) if name == "loaded" else "",
            "serialize s": _fmt(manifest.timings.get("serialize"), 1) if name == "loaded" else "",
            "bundle MB": _fmt(size_mb, 1) if name == "loaded" else "",
        }
        idle_mib = idle / 2**20 if name == "loaded" and idle is not None else None
        rows.append(Row(cells=cells, median_ms=stats["median_ms"], idle_mib=idle_mib))
    return rows


def markdown(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.cells[c] for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path) -> None:
    """Median latency of every variant, and idle memory of every loaded bundle, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r.cells['model']} {r.cells['precision']}\n{r.cells['policy'] or r.cells['variant']}" for r in rows
    ]
    memory = [(label, r.idle_mib) for label, r in zip(labels, rows, strict=True) if r.idle_mib is not None]
    figure, axes = plt.subplots(
        1, 2 if memory else 1, figsize=(max(8, 0.9 * len(rows)) + 4, 5), squeeze=False
    )
    latency_axis = axes[0][0]
    latency_axis.bar(range(len(rows)), [r.median_ms for r in rows], color="tab:blue")
    latency_axis.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    latency_axis.set_ylabel("median latency (ms, host wall-clock)")
    latency_axis.set_yscale("log")
    latency_axis.set_title("latency per variant")
    if memory:
        memory_axis = axes[0][1]
        memory_axis.bar(range(len(memory)), [m for _, m in memory], color="tab:orange")
        memory_axis.set_xticks(
            range(len(memory)), [label for label, _ in memory], rotation=60, ha="right", fontsize=7
        )
        memory_axis.set_ylabel("GPU memory held while idle (MiB)")
        memory_axis.set_title("idle memory per loaded bundle")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


COLD_START_DIR = "coldstart"


def cold_start_markdown(directory: Path) -> str:
    """A table of ``DIR/coldstart/*.json`` (``python -m pipeline.bundle coldstart --json``), each
    beside the compile time recorded in its bundle's manifest (measured in the same run)."""
    lines = []
    for path in sorted((directory / COLD_START_DIR).glob("*.json")):
        figures = json.loads(path.read_text(encoding="utf-8"))
        median = figures["median"]
        manifest = read_manifest(Path(figures["bundle"]))
        compile_seconds = manifest.timings.get("compile", 0.0)
        total = median["process_to_first_output_s"]
        lines.append(
            f"| {manifest.model_name} {manifest.precision} {manifest.runtime['policy']['name']} "
            f"| {median['import_torch_s'] + median['cuda_init_s']:.2f} | {median['load_bundle_s']:.2f} "
            f"| {median['first_call_s']:.3f} | {total:.2f} | {compile_seconds:.2f} "
            f"| {total / compile_seconds if compile_seconds else float('nan'):.2f} |"
        )
    if not lines:
        return ""
    header = (
        "| bundle | import torch + CUDA init (s) | load_bundle (s) | first call (s) "
        "| process start to first output (s) | compile (s) | cold start / compile |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    return header + "\n".join(lines) + "\n"


def write_report(directory: Path) -> tuple[Path, Path] | None:
    """Write ``report.md`` and ``report.png`` into ``directory``; None if nothing was benchmarked."""
    rows = [row for manifest in find_manifests(directory) for row in rows_for(manifest)]
    if not rows:
        return None
    table, picture = directory / "report.md", directory / "report.png"
    text = "# Runtime policy comparison\n\n" + markdown(rows)
    cold = cold_start_markdown(directory)
    if cold:
        text += "\n# Cold start (fresh process per run) beside the compile of the same model\n\n" + cold
    table.write_text(text, encoding="utf-8")
    chart(rows, picture)
    return table, picture


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (1 when no benchmarked bundle was found)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__)
    parser.add_argument("directory", nargs="?", default="artifacts")
    args = parser.parse_args(argv)
    written = write_report(Path(args.directory))
    if written is None:
        console.print(
            f"[red]error:[/] no benchmarked bundle under {args.directory} (run with the bench stage)"
        )
        return 1
    print(written[0].read_text(encoding="utf-8"), end="")
    console.print(f"wrote {written[0]} and {written[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
