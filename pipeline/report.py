"""``python -m pipeline.report [DIR]``: compare runtime policies across benchmarked bundles.

Reads the ``bench`` section of every bundle manifest under ``DIR`` (default ``artifacts``) and
writes ``DIR/report.md`` (markdown tables: policies, the bundle against its peers, memory in the
allocator and device views, ...) and ``DIR/report.png`` (latency per model on linear axes from
zero, idle memory, cold start beside compile time; every value printed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.schema import Identity, Stage, identity_of
from pipeline.console import console
from pipeline.errors import BundleError
from pipeline.runtime.format import MANIFEST_NAME, Manifest, read_manifest
from pipeline.stages.bench import LOADED, PEERS, not_faster_note, peer_ratios

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
    "allocator idle MiB",
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


def loaded_policy(variant: str, bench_policy: str) -> str:
    """The policy a loaded variant ran under: ``loaded`` the bundle's own, ``loaded:<name>`` name's."""
    return variant.split(":", 1)[1] if ":" in variant else bench_policy


def policy_applies(manifest: Manifest, policy: str) -> bool:
    """Whether ``policy`` was in force when ``manifest``'s bundle was timed under it.

    Bundles benched since the bench stage records it list the policies it could not apply;
    for older ones, no policy but the default applies to an export bundle (it has no engines).
    """
    recorded = manifest.bench.get("policies_not_applied")
    if isinstance(recorded, dict):
        return policy not in recorded
    return policy == "standard" or manifest.backend != "export"


def timed_variants(manifest: Manifest) -> dict[str, dict[str, float]]:
    """``manifest``'s latency per variant, without the timings of policies that did not apply.

    ``loaded`` stays (it is the bundle as loaded, whatever its policy did); ``loaded:<policy>``
    and ``fresh:<policy>`` of a policy that did not apply would show the standard timing under
    another policy's name, so they are left out.
    """
    latency: dict[str, dict[str, float]] = manifest.bench.get("latency", {})
    return {
        name: stats
        for name, stats in latency.items()
        if ":" not in name or policy_applies(manifest, name.split(":", 1)[1])
    }


def policy_label(manifest: Manifest, policy: str) -> str:
    """``policy``, marked ``(not applied)`` where it was not in force."""
    return policy if policy_applies(manifest, policy) else f"{policy} (not applied)"


def rows_for(manifest: Manifest) -> list[Row]:
    """Table rows of one bundle: its loaded variants first, then the baselines."""
    bench = manifest.bench
    latency = timed_variants(manifest)
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

        is_loaded = name.startswith(LOADED)
        policy = loaded_policy(name, bench["policy"])
        cells = {
            "model": manifest.model_name,
            "precision": manifest.precision,
            "backend": manifest.backend,
            "policy": policy_label(manifest, policy) if is_loaded else "",
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
            "allocator idle MiB": (
                _fmt(idle / 2**20, 0) if is_loaded and name == "loaded" and idle is not None else ""
            ),
            "load s": _fmt(load.get("load_seconds"), 2) if name == "loaded" else "",
            "first call ms": _fmt(load.get("first_call_seconds", 0) * 1e3, 1) if name == "loaded" else "",
            "compile s": _fmt(manifest.timings.get("compile"), 1) if name == "loaded" else "",
            "serialize s": _fmt(manifest.timings.get("serialize"), 1) if name == "loaded" else "",
            "bundle MB": _fmt(size_mb, 1) if name == "loaded" else "",
        }
        rows.append(Row(cells=cells))
    return rows


#: The peers table's column per peer, named after it.
PEER_COLUMNS: dict[str, str] = {peer: f"vs {label}" for peer, label in PEERS.items()}
PEERS_HEADER = ["model", "precision", "policy", "bundle median ms", *PEER_COLUMNS.values(), "note"]


def peer_rows(manifest: Manifest) -> list[list[str]]:
    """Per loaded variant of ``manifest``'s bundle, its median over each peer's ('-': not timed)
    and, where it is not faster than a peer, a note that says so."""
    latency = timed_variants(manifest)
    medians = {name: stats["median_ms"] for name, stats in latency.items()}
    rows = []
    for name in (name for name in latency if name.startswith(LOADED)):
        ratios = peer_ratios(medians, name)
        if not ratios:
            continue
        policy = loaded_policy(name, manifest.bench["policy"])
        rows.append(
            [
                manifest.model_name,
                manifest.precision,
                policy_label(manifest, policy),
                _fmt(medians[name]),
                *(f"{ratios[peer]:.2f}x" if peer in ratios else "-" for peer in PEER_COLUMNS),
                not_faster_note(ratios) or "faster than every peer timed",
            ]
        )
    return rows


def peers_markdown(manifests: list[Manifest]) -> str:
    """Every benchmarked bundle against its peers as a markdown table ('' when none timed a peer)."""
    rows = [row for manifest in manifests for row in peer_rows(manifest)]
    return markdown_table(PEERS_HEADER, rows) if rows else ""


#: The memory table's columns: each figure's view is in its header (docs/benchmarks.md says how
#: each is measured), over the memory in use before the load.
MEMORY_HEADER = [
    "model",
    "precision",
    "policy",
    "allocator idle MiB",
    "allocator peak MiB",
    "device idle MiB (nvidia-smi)",
    "device peak MiB (nvidia-smi)",
    "process idle MiB (NVML)",
    "process peak MiB (NVML)",
]
#: The load record's key behind each figure column of :data:`MEMORY_HEADER`.
MEMORY_KEYS = [
    "idle_engine_memory",
    "peak_allocated",
    "device_idle_memory",
    "device_peak_memory",
    "process_idle_memory",
    "process_peak_memory",
]


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def memory_rows(manifest: Manifest) -> list[list[str]]:
    """Per loaded variant measured alone (the bundle's own policy, then each extra policy's own
    load), its idle and peak memory in each view; ``-`` where not measured (CPU, NVML without a
    figure for the process, or a bundle benched before the view was recorded)."""
    bench = manifest.bench
    loads = {bench["policy"]: bench.get("load", {}), **bench.get("variant_loads", {})}
    return [
        [
            manifest.model_name,
            manifest.precision,
            policy_label(manifest, policy),
            *(_mib(load.get(key)) for key in MEMORY_KEYS),
        ]
        for policy, load in loads.items()
    ]


def memory_markdown(manifests: list[Manifest]) -> str:
    """Every benchmarked bundle's memory, allocator and device views side by side."""
    rows = [row for manifest in manifests for row in memory_rows(manifest)]
    return markdown_table(MEMORY_HEADER, rows) if rows else ""


@dataclass
class Fastest:
    """The bundle with the lowest median latency for one model, precision and runtime policy
    (Model Navigator's "min latency" choice), and how to build it again."""

    model: str
    precision: str
    policy: str
    median_ms: float
    bundle_id: str
    candidates: int
    settings: dict[str, Any]
    command: str


def _override_key(override: str) -> str:
    """The dotted key (or config group) an override sets: ``compile.x=1`` -> ``compile.x``."""
    return override.lstrip("+~").partition("=")[0]


def _decides_bundle(override: str, benched: bool) -> bool:
    """Whether a recorded override changed what the bundle is (the schema's identity marks)."""
    key = _override_key(override)
    top = re.split(r"[./]", key, maxsplit=1)[0]
    if top == "hydra":
        return False
    kind = identity_of(top)
    if kind is Identity.run:
        # A benched bundle's id covers its bench settings, which only count with the bench stage.
        return benched and top == "stages"
    return benched or kind is not Identity.bench


def _override_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _preset_compile_keys(policy: str) -> list[str] | None:
    """The compile settings runtime preset ``policy`` sets (``conf/runtime/<policy>.yaml``);
    None when the preset's file is not one this checkout ships."""
    from pipeline.config.loading import CONFIG_DIR

    path = CONFIG_DIR / "runtime" / f"{policy}.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    compile_section = data.get("compile") if isinstance(data, dict) else None
    return sorted(compile_section) if isinstance(compile_section, dict) else []


def _preset_keys_or_all(policy: str, compile_settings: dict[str, Any]) -> list[str]:
    keys = _preset_compile_keys(policy)
    return list(compile_settings) if keys is None else keys


def rebuild_command(manifest: Manifest, policy: str) -> str:
    """The command that builds ``manifest``'s engines again, loaded under ``policy``.

    Every recorded override that decides the bundle is kept (the schema's identity marks: model,
    precision, backend, compile, runtime, verify; stages and bench settings when the bundle was
    benched, as they are part of its id), and a ``--config-dir`` the build was run with (without
    it a user's own model would not be found). Where and whether things ran (``artifacts_dir``,
    ``force``, ``hydra.*``) is dropped. Under the bundle's own policy, on the same host, libraries
    and model code, the command makes the bundle of the same id. Under another policy, the runtime
    preset is swapped and the compile settings either preset sets (``dynamic`` sets some) are
    given as the bundle recorded them, so that the same engines are built.
    """
    benched = bool(manifest.bench) or Stage.bench.value in manifest.config.get("stages", [])
    kept = [o for o in manifest.overrides if o.startswith("-") or _decides_bundle(o, benched)]
    flags = [o for o in kept if o.startswith("-")]
    settings = [o for o in kept if not o.startswith("-")]
    own = str(manifest.runtime.get("policy", {}).get("name", ""))
    pinned: list[str] = []
    if policy != own:
        settings = [o for o in settings if _override_key(o) != "runtime" and not o.startswith("runtime.")]
        compile_settings = manifest.config.get("compile", manifest.compile_settings)
        keys = {key for name in (own, policy) for key in _preset_keys_or_all(name, compile_settings)}
        pinned = [f"compile.{key}={_override_value(compile_settings.get(key))}" for key in sorted(keys)]
        settings = [o for o in settings if _override_key(o) not in {p.partition("=")[0] for p in pinned}]
        settings.append(f"runtime={policy}")
    groups = [o for o in settings if _override_key(o) in ("model", "precision", "runtime")]
    rest = [o for o in settings if o not in groups]
    order = {"model": 0, "precision": 1, "runtime": 2}
    groups.sort(key=lambda o: order[_override_key(o)])
    return " ".join(["python -m pipeline", *flags, *groups, *rest, *pinned])


def fastest_bundles(manifests: list[Manifest]) -> list[Fastest]:
    """Per model, precision and policy, the fastest loaded bundle among ``manifests``.

    Every loaded variant counts under its policy (``loaded`` under the bundle's own,
    ``loaded:<name>`` under ``<name>``), so a sweep over compile settings (e.g.
    ``compile.optimization_level``) picks the best build for each policy.
    """
    groups: dict[tuple[str, str, str], list[tuple[float, Manifest]]] = {}
    for manifest in manifests:
        for name, stats in timed_variants(manifest).items():
            policy = loaded_policy(name, manifest.bench["policy"])
            # A policy that was not in force cannot win under its name.
            if name.startswith(LOADED) and policy_applies(manifest, policy):
                key = (manifest.model_name, manifest.precision, policy)
                groups.setdefault(key, []).append((stats["median_ms"], manifest))
    choices = []
    for (model, precision, policy), timed in sorted(groups.items()):
        median_ms, best = min(timed, key=lambda pair: pair[0])
        choices.append(
            Fastest(
                model=model,
                precision=precision,
                policy=policy,
                median_ms=median_ms,
                bundle_id=best.bundle_id,
                candidates=len(timed),
                settings={k: v for k, v in best.compile_settings.items() if v is not None},
                command=rebuild_command(best, policy),
            )
        )
    return choices


def fastest_markdown(choices: list[Fastest]) -> str:
    """The fastest bundles as a markdown table, with the command that rebuilds each."""
    return markdown_table(
        ["model", "precision", "policy", "median ms", "bundle", "of", "rebuild"],
        [
            [
                c.model,
                c.precision,
                c.policy,
                f"{c.median_ms:.3f}",
                c.bundle_id,
                str(c.candidates),
                f"`{c.command}`",
            ]
            for c in choices
        ],
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of ``rows`` under ``header``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    return markdown_table(COLUMNS, [[row.cells[c] for c in COLUMNS] for row in rows])


@dataclass
class Bar:
    """One bar of the chart: a label, its value, and the whisker's ends (p10-p90) if any."""

    label: str
    value: float
    low: float | None = None
    high: float | None = None
    colour_key: str = ""  # bars with the same key share a colour (default: the label)


# Loaded bundles first (in the policies' usual order), the fresh compile, then the other baselines.
_VARIANT_ORDER = (
    "bundle standard",
    "bundle preallocated",
    "bundle cudagraphs",
    "bundle dynamic",
    "fresh",
    "fresh:",
    "inductor",
    "inductor_reduce_overhead",
    "inductor_max_autotune",
    "eager",
)


def _variant_rank(label: str) -> tuple[int, str]:
    key = "fresh:" if label.startswith("fresh:") else label
    return (_VARIANT_ORDER.index(key) if key in _VARIANT_ORDER else len(_VARIANT_ORDER), label)


def _variant_label(name: str, policy: str) -> str:
    return f"bundle {loaded_policy(name, policy)}" if name.startswith(LOADED) else name


def latency_bars(manifests: list[Manifest]) -> dict[str, list[Bar]]:
    """Per model (``name precision``), one bar per variant: median latency with p10-p90.

    Two bundles of one model timed the same baseline each; the first (by bundle name) is shown.
    """
    models: dict[str, dict[str, Bar]] = {}
    for manifest in manifests:
        bars = models.setdefault(f"{manifest.model_name} {manifest.precision}", {})
        for name, stats in timed_variants(manifest).items():
            label = _variant_label(name, manifest.bench["policy"])
            if name == LOADED and not policy_applies(manifest, manifest.bench["policy"]):
                label += " (not applied)"
            low = stats.get("p10_ms") if stats.get("p10_ms") is not None else stats["min_ms"]
            bars.setdefault(label, Bar(label, stats["median_ms"], low, stats["p90_ms"]))

    return {
        model: sorted(bars.values(), key=lambda bar: _variant_rank(bar.label))
        for model, bars in models.items()
    }


def memory_bars(manifests: list[Manifest]) -> list[Bar]:
    """GPU memory a loaded bundle holds while idle (MiB), per bundle that measured it."""
    bars = []
    for manifest in manifests:
        idle = manifest.bench.get("load", {}).get("idle_engine_memory")
        if idle is not None:
            policy = manifest.bench["policy"]
            label = f"{manifest.model_name} {manifest.precision} {policy}"
            bars.append(Bar(label, idle / 2**20, colour_key=f"bundle {policy}"))
    return bars


# Cold-start measurements: each bundle's manifest with the figures measured for it.
ColdStarts = list[tuple[Manifest, dict[str, Any]]]


def cold_starts(directory: Path) -> ColdStarts:
    """``DIR/coldstart/*.json`` (``python -m pipeline.bundle coldstart --json``) with the manifest
    of each measured bundle; a file that cannot be read, or whose bundle is gone, is skipped."""
    found = []
    for path in sorted((directory / COLD_START_DIR).glob("*.json")):
        try:
            figures = json.loads(path.read_text(encoding="utf-8"))
            found.append((read_manifest(Path(figures["bundle"])), figures))
        except (OSError, ValueError, KeyError, TypeError, BundleError) as error:
            console.print(f"[yellow]skipped[/] {path}: {error}")
    return found


def cold_start_bars(measured: ColdStarts) -> list[Bar]:
    """Cold start (process start to first output, ``coldstart`` runs) beside each bundle's compile."""
    bars = []
    for manifest, figures in measured:
        policy = manifest.runtime["policy"]["name"]
        label = f"{manifest.model_name} {manifest.precision} {policy}{cache_note(figures)}"
        seconds = [run["process_to_first_output_s"] for run in figures["runs"]]
        median = figures["median"]["process_to_first_output_s"]
        bars.append(Bar(f"{label}: cold start", median, min(seconds), max(seconds), f"bundle {policy}"))
        bars.append(Bar(f"{label}: compile", manifest.timings.get("compile", 0.0), colour_key="compile"))
    return bars


def build_chart(manifests: list[Manifest], measured: ColdStarts) -> Any:
    """The report's figure: latency per model (linear axes from zero, p10-p90 whiskers, one colour
    per variant), idle GPU memory per bundle, and cold start beside compile time; values printed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = latency_bars(manifests)
    panels: list[tuple[str, str, list[Bar], str]] = [
        (f"{model}: latency per call", "median ms (host wall-clock), whiskers p10-p90", bars, "{:.3f}")
        for model, bars in latency.items()
    ]
    memory = memory_bars(manifests)
    if memory:
        panels.append(("GPU memory held while idle (allocator view)", "MiB", memory, "{:.0f}"))
    cold = cold_start_bars(measured)
    if cold:
        panels.append(("cold start (fresh process) vs compile", "seconds, whiskers min-max", cold, "{:.2f}"))
    labels = sorted(
        {bar.colour_key or bar.label for _, _, bars, _ in panels for bar in bars}, key=_variant_rank
    )
    palette = plt.get_cmap("tab20")
    colours = {label: palette(i % 20) for i, label in enumerate(labels)}
    height = sum(max(1.6, 0.45 * len(bars) + 1.0) for _, _, bars, _ in panels)
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, height),
        squeeze=False,
        gridspec_kw={"height_ratios": [max(1.0, len(bars)) for _, _, bars, _ in panels]},
    )
    for axis, (title, unit, bars, fmt) in zip(axes[:, 0], panels, strict=True):
        positions = range(len(bars))
        colour = [colours[bar.colour_key or bar.label] for bar in bars]
        axis.barh(list(positions), [bar.value for bar in bars], color=colour)
        top = max((bar.high if bar.high is not None else bar.value) for bar in bars)
        for position, bar in zip(positions, bars, strict=True):
            if bar.low is not None and bar.high is not None:
                whisker = [[bar.value - bar.low], [bar.high - bar.value]]
                axis.errorbar(bar.value, position, xerr=whisker, color="black", capsize=3, linewidth=1)
            end = bar.high if bar.high is not None else bar.value
            axis.text(end + top * 0.01, position, fmt.format(bar.value), va="center", fontsize=8)
        axis.set_yticks(list(positions), [bar.label for bar in bars], fontsize=8)
        axis.invert_yaxis()
        axis.set_xscale("linear")
        axis.set_xlim(0, top * 1.25 if top > 0 else 1)
        axis.set_title(title, fontsize=10, loc="left")
        axis.set_xlabel(unit, fontsize=8)
    figure.tight_layout()
    return figure


def chart(manifests: list[Manifest], measured: ColdStarts, path: Path) -> None:
    """Write :func:`build_chart`'s figure to ``path`` as a PNG."""
    import matplotlib.pyplot as plt

    figure = build_chart(manifests, measured)
    figure.savefig(path, dpi=120)
    plt.close(figure)


#: Precisions that quantize: each is expected to be faster than fp16, and flagged when not.
QUANTIZED = ("fp8", "int8", "int8_weight_only")


@dataclass
class PrecisionRow:
    """One bundle's loaded latency, memory, accuracy and size, for the side-by-side of precisions."""

    model: str
    policy: str
    precision: str
    median_ms: float
    idle_mib: float | None
    accuracy: str
    bundle_mb: float


def accuracy_measure(manifest: Manifest) -> str:
    """The bundle's verification figures in one cell: worst cosine against its reference (the
    eager model in its precision, or ModelOpt's simulated quantization) and, for reduced
    precisions, worst cosine and top-1 agreement against fp32 eager."""
    verification = manifest.verification
    comparisons = verification.get("comparisons", [])
    if not comparisons:
        return ""
    text = f"cos {min(c['cosine'] for c in comparisons):.5f}"
    task = verification.get("task", [])
    if task:
        text += f"; vs fp32 cos {min(t['cosine'] for t in task):.4f}"
        top1 = [t["top1"] for t in task if t.get("top1") is not None]
        if top1:
            text += f", top-1 {min(top1):.3f}"
    return text


def precision_rows(manifests: list[Manifest]) -> list[PrecisionRow]:
    """Per model and policy, the fastest bundle of each precision (its own policy's loaded
    variant), with memory, accuracy measure and bundle size."""
    best: dict[tuple[str, str, str], tuple[float, Manifest]] = {}
    for manifest in manifests:
        stats = timed_variants(manifest).get(LOADED)
        if stats is None:
            continue
        key = (manifest.model_name, str(manifest.bench.get("policy", "")), manifest.precision)
        if key not in best or stats["median_ms"] < best[key][0]:
            best[key] = (stats["median_ms"], manifest)
    rows = []
    for (model, policy, precision), (median_ms, manifest) in sorted(best.items()):
        idle = manifest.bench.get("load", {}).get("idle_engine_memory")
        rows.append(
            PrecisionRow(
                model=model,
                policy=policy,
                precision=precision,
                median_ms=median_ms,
                idle_mib=idle / 2**20 if idle is not None else None,
                accuracy=accuracy_measure(manifest),
                bundle_mb=sum(f.size for f in manifest.files) / 1e6,
            )
        )
    return rows


def precision_markdown(rows: list[PrecisionRow]) -> str:
    """Precisions side by side per model and policy (empty when no model has two); a
    quantized engine not faster than fp16 is flagged (its Q/DQ likely fell back to 16-bit kernels)."""
    groups: dict[tuple[str, str], list[PrecisionRow]] = {}
    for row in rows:
        groups.setdefault((row.model, row.policy), []).append(row)
    table = []
    for (model, policy), group in groups.items():
        if len(group) < 2:
            continue
        fp16 = next((r.median_ms for r in group if r.precision == "fp16"), None)
        for row in group:
            versus = f"{row.median_ms / fp16:.2f}x" if fp16 else ""
            flag = ""
            if row.precision in QUANTIZED and fp16 is not None and row.median_ms >= fp16:
                flag = "not faster than fp16 (Q/DQ fell back to 16-bit kernels?)"
            table.append(
                [
                    model,
                    policy,
                    row.precision,
                    f"{row.median_ms:.3f}",
                    versus,
                    _fmt(row.idle_mib, 0) if row.idle_mib is not None else "",
                    row.accuracy,
                    f"{row.bundle_mb:.1f}",
                    flag,
                ]
            )
    if not table:
        return ""
    header = [
        "model",
        "policy",
        "precision",
        "median ms",
        "vs fp16",
        "allocator idle MiB",
        "accuracy",
        "bundle MB",
        "note",
    ]
    return markdown_table(header, table)


COLD_START_DIR = "coldstart"


def cache_note(figures: dict[str, Any]) -> str:
    """`` (runtime cache off)`` for a cold start measured with ``--runtime-cache off``, else ''."""
    return " (runtime cache off)" if figures.get("runtime_cache") == "off" else ""


def cache_outcome(figures: dict[str, Any]) -> str:
    """What the first measured process's load report said of the runtime cache ('' if nothing)."""
    runs = figures.get("runs") or [{}]
    return str((runs[0].get("engines") or {}).get("runtime_cache", ""))


def cold_start_markdown(measured: ColdStarts) -> str:
    """A table of ``DIR/coldstart/*.json`` (``python -m pipeline.bundle coldstart --json``), each
    beside the compile time recorded in its bundle's manifest (measured in the same run)."""
    rows = []
    for manifest, figures in measured:
        median = figures["median"]
        compile_seconds = manifest.timings.get("compile", 0.0)
        total = median["process_to_first_output_s"]
        rows.append(
            [
                f"{manifest.model_name} {manifest.precision} {manifest.runtime['policy']['name']}"
                + cache_note(figures),
                cache_outcome(figures) or "-",
                f"{median['import_torch_s'] + median['cuda_init_s']:.2f}",
                f"{median['load_bundle_s']:.2f}",
                f"{median['first_call_s']:.3f}",
                f"{total:.2f}",
                f"{compile_seconds:.2f}",
                f"{total / compile_seconds if compile_seconds else float('nan'):.2f}",
            ]
        )
    if not rows:
        return ""
    header = [
        "bundle",
        "runtime cache (load report)",
        "import torch + CUDA init (s)",
        "load_bundle (s)",
        "first call (s)",
        "process start to first output (s)",
        "compile (s)",
        "cold start / compile",
    ]
    return markdown_table(header, rows)


def write_report(directory: Path) -> tuple[Path, Path] | None:
    """Write ``report.md`` and ``report.png`` into ``directory``; None if nothing was benchmarked."""
    manifests = find_manifests(directory)
    rows = [row for manifest in manifests for row in rows_for(manifest)]
    if not rows:
        return None
    table, picture = directory / "report.md", directory / "report.png"
    text = "# Runtime policy comparison\n\n" + markdown(rows)
    peers = peers_markdown(manifests)
    if peers:
        text += (
            "\n# The bundle against its peers\n\n"
            "Median latency of the loaded bundle over each peer's, timed side by side in one process "
            "(below 1.00x the bundle is faster).\n\n" + peers
        )
    memory = memory_markdown(manifests)
    if memory:
        text += (
            "\n# GPU memory of each loaded bundle, allocator and device views\n\n"
            "Over the memory in use before the load. Allocator: torch's unused cache freed (idle), "
            "torch's peak allocated (peak). Device: what nvidia-smi shows, torch's cache kept; "
            "peak is the larger of the samples after the first call and after the warm-up. "
            "Process: NVML's figure for the benchmarking process. `-`: not measured.\n\n" + memory
        )
    text += "\n# Fastest bundle per model, precision and policy\n\n" + fastest_markdown(
        fastest_bundles(manifests)
    )
    precisions = precision_markdown(precision_rows(manifests))
    if precisions:
        text += "\n# Precisions side by side (loaded bundle, its own policy)\n\n" + precisions
    measured = cold_starts(directory)
    cold = cold_start_markdown(measured)
    if cold:
        text += "\n# Cold start (fresh process per run) beside the compile of the same model\n\n" + cold
    table.write_text(text, encoding="utf-8")
    chart(manifests, measured, picture)
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
