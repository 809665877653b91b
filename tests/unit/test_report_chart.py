"""The report's chart reads truthfully: linear axes from zero, whiskers, values printed, colours
that mean the same variant in every panel."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from omegaconf import OmegaConf

from pipeline.config import compose, config_dict, resolve
from pipeline.report import (
    COLD_START_DIR,
    build_chart,
    cold_starts,
    fastest_bundles,
    fastest_markdown,
    latency_bars,
    rebuild_command,
    rows_for,
)
from pipeline.runtime.format import Manifest
from tests.helpers import sample_manifest


def stats(median: float, p10: float | None = None) -> dict[str, Any]:
    values = {"median_ms": median, "p90_ms": median * 1.1, "min_ms": median * 0.8, "iterations": 10}
    if p10 is not None:
        values["p10_ms"] = p10
    return values


def benched(model: str, policy: str, latency: dict[str, dict[str, Any]], idle: int | None = None) -> Manifest:
    return sample_manifest(
        model_name=model,
        backend="tensorrt",
        runtime={"policy": {"name": policy}, "applied": True, "reason": ""},
        bench={"policy": policy, "latency": latency, "load": {"idle_engine_memory": idle}},
    )


MANIFESTS = [
    benched(
        "bert",
        "preallocated",
        {
            "loaded": stats(0.31, p10=0.30),
            "loaded:cudagraphs": stats(0.21, p10=0.20),
            "fresh": stats(0.33, p10=0.32),
            "eager": stats(5.4, p10=5.3),
        },
        idle=800 * 2**20,
    ),
    benched("resnet50", "standard", {"loaded": stats(5.5), "fresh": stats(5.6)}, idle=656 * 2**20),
]


@pytest.fixture
def figure() -> Any:
    chart = build_chart(MANIFESTS, [])
    yield chart
    plt.close(chart)


def test_chart_draws_every_panel_linear_from_zero_with_values_printed_when_built(figure: Any) -> None:
    titles = [axis.get_title(loc="left") for axis in figure.axes]
    assert titles == [
        "bert fp32: latency per call",
        "resnet50 fp32: latency per call",
        "GPU memory held while idle (allocator view)",
    ]
    for axis in figure.axes:
        assert axis.get_xscale() == "linear" and axis.get_xlim()[0] == 0
    printed = {text.get_text() for text in figure.axes[0].texts}
    assert {"0.310", "0.210", "0.330", "5.400"} <= printed
    assert {"800", "656"} <= {text.get_text() for text in figure.axes[2].texts}


def test_chart_gives_a_variant_one_colour_across_panels_when_models_share_it(figure: Any) -> None:
    def colours(axis: Any) -> dict[str, Any]:
        labels = [tick.get_text() for tick in axis.get_yticklabels()]
        return {label: patch.get_facecolor() for label, patch in zip(labels, axis.patches, strict=True)}

    bert, resnet, memory = (colours(axis) for axis in figure.axes)
    assert bert["fresh"] == resnet["fresh"]
    assert bert["bundle preallocated"] == memory["bert fp32 preallocated"]
    assert len(set(bert.values())) == len(bert)


def test_latency_bars_whisker_p10_to_p90_falling_back_to_min_when_p10_missing() -> None:
    bars = {bar.label: bar for bar in latency_bars(MANIFESTS)["bert fp32"]}
    assert (bars["bundle preallocated"].low, bars["bundle preallocated"].high) == (0.30, pytest.approx(0.341))
    resnet = {bar.label: bar for bar in latency_bars(MANIFESTS)["resnet50 fp32"]}
    assert resnet["bundle standard"].low == pytest.approx(5.5 * 0.8)
    assert list(bars) == ["bundle preallocated", "bundle cudagraphs", "fresh", "eager"]


def test_cold_starts_skip_measurement_when_its_bundle_is_gone(tmp_path: Path) -> None:
    (tmp_path / COLD_START_DIR).mkdir()
    (tmp_path / COLD_START_DIR / "gone.json").write_text('{"bundle": "%s"}' % (tmp_path / "gone"))
    (tmp_path / COLD_START_DIR / "garbled.json").write_text("{not json")
    assert cold_starts(tmp_path) == []


def swept(bundle_id: str, level: int, latency: dict[str, dict[str, Any]]) -> Manifest:
    manifest = benched("bert", "preallocated", latency)
    manifest.bundle_id = bundle_id
    manifest.overrides = [
        "model=bert",
        "precision=fp32",
        "runtime=preallocated",
        f"compile.optimization_level={level}",
        "artifacts_dir=/tmp/sweep",
        "stages=[build,compile,serialize,reload,verify,bench,package]",
        "bench.policies=[cudagraphs]",
    ]
    manifest.compile_settings = {"optimization_level": level, "lazy_engine_init": False}
    return manifest


def test_fastest_bundles_pick_lowest_median_per_policy_with_rebuild_command_when_a_sweep_differs() -> None:
    level3 = swept("a" * 16, 3, {"loaded": stats(0.50), "loaded:cudagraphs": stats(0.30)})
    level5 = swept("b" * 16, 5, {"loaded": stats(0.40), "loaded:cudagraphs": stats(0.35)})
    choices = {c.policy: c for c in fastest_bundles([level3, level5, MANIFESTS[1]]) if c.model == "bert"}

    assert choices["preallocated"].bundle_id == "b" * 16 and choices["preallocated"].candidates == 2
    # A benched bundle's id covers its stages and bench settings: the command keeps them.
    assert choices["preallocated"].command == (
        "python -m pipeline model=bert precision=fp32 runtime=preallocated compile.optimization_level=5 "
        "stages=[build,compile,serialize,reload,verify,bench,package] bench.policies=[cudagraphs]"
    )
    assert choices["cudagraphs"].bundle_id == "a" * 16
    assert " runtime=cudagraphs compile.optimization_level=3 stages=" in choices["cudagraphs"].command
    assert "artifacts_dir" not in choices["cudagraphs"].command
    assert choices["cudagraphs"].settings["optimization_level"] == 3
    table = fastest_markdown(fastest_bundles([level3, level5]))
    assert "| bert | fp32 | cudagraphs | 0.300 | aaaaaaaaaaaaaaaa | 2 |" in table


def exported(latency: dict[str, dict[str, Any]], not_applied: dict[str, str] | None = None) -> Manifest:
    """An export-backend bundle benched with cudagraphs, a policy it has no engines for."""
    manifest = benched("tiny_cnn", "preallocated", latency)
    manifest.backend = "export"
    if not_applied is not None:
        manifest.bench["policies_not_applied"] = not_applied
    return manifest


EXPORT_TIMINGS = {"loaded": stats(0.5), "loaded:cudagraphs": stats(0.4), "fresh:cudagraphs": stats(0.45)}


@pytest.mark.parametrize(
    "manifest",
    [
        exported(EXPORT_TIMINGS),  # benched before the bench stage recorded what applied
        exported(EXPORT_TIMINGS, {"preallocated": "no engines", "cudagraphs": "no engines"}),
    ],
)
def test_report_leaves_out_policy_timings_when_export_bundle_did_not_apply_them(manifest: Manifest) -> None:
    assert fastest_bundles([manifest]) == []
    assert [bar.label for bar in latency_bars([manifest])["tiny_cnn fp32"]] == [
        "bundle preallocated (not applied)"
    ]
    (row,) = rows_for(manifest)
    assert row.cells["policy"] == "preallocated (not applied)" and row.cells["median ms"] == "0.500"


def test_rebuild_command_keeps_config_dir_when_build_used_one() -> None:
    manifest = swept("c" * 16, 3, {"loaded": stats(0.5)})
    manifest.overrides = ["--config-dir=/home/me/myconf", *manifest.overrides]
    assert rebuild_command(manifest, "preallocated").startswith(
        "python -m pipeline --config-dir=/home/me/myconf model=bert precision=fp32 runtime=preallocated "
        "compile.optimization_level=3"
    )


@pytest.mark.parametrize(("built_with", "rebuilt_for"), [("standard", "dynamic"), ("dynamic", "standard")])
def test_rebuild_command_builds_the_same_engines_when_the_policy_preset_carries_compile_flags(
    built_with: str, rebuilt_for: str
) -> None:
    overrides = ["model=tiny_cnn", f"runtime={built_with}", "compile.optimization_level=3"]
    config = config_dict(resolve(compose(overrides)))
    manifest = sample_manifest(
        config=config,
        compile_settings=config["compile"],
        overrides=overrides,
        runtime={"policy": {"name": built_with}, "applied": True, "reason": ""},
    )
    command = rebuild_command(manifest, rebuilt_for)
    arguments = shlex.split(command)[3:]
    assert f"runtime={rebuilt_for}" in arguments
    rebuilt = OmegaConf.to_container(compose(arguments), enum_to_str=True)
    assert isinstance(rebuilt, dict)
    assert rebuilt["compile"] == config["compile"] and rebuilt["runtime"]["name"] == rebuilt_for


def test_cold_start_table_says_which_runs_had_no_runtime_cache_when_measured_both_ways() -> None:
    from pipeline.report import cold_start_markdown

    manifest = sample_manifest(
        model_name="bert",
        precision="fp16",
        runtime={"policy": {"name": "preallocated"}},
        timings={"compile": 20.0},
    )

    def figures(cache: str | None, outcome: str, seconds: float) -> dict[str, Any]:
        median = {
            "import_torch_s": 1.5,
            "cuda_init_s": 0.3,
            "load_bundle_s": seconds - 1.9,
            "first_call_s": 0.03,
            "process_to_first_output_s": seconds,
        }
        found: dict[str, Any] = {"runs": [{"engines": {"runtime_cache": outcome}}], "median": median}
        if cache is not None:
            found["runtime_cache"] = cache
        return found

    table = cold_start_markdown(
        [
            (manifest, figures(None, "hit", 2.4)),
            (manifest, figures("off", "miss: runtime.runtime_cache=off", 11.0)),
        ]
    )
    rows = [line for line in table.splitlines() if line.startswith("| bert")]
    assert rows[0].startswith("| bert fp16 preallocated | hit | 1.80 | 0.50 |")
    assert rows[1].startswith(
        "| bert fp16 preallocated (runtime cache off) | miss: runtime.runtime_cache=off |"
    )
