"""GPU suite: skipped cleanly unless a CUDA GPU and torch_tensorrt are both present."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.backends import tensorrt_unavailable_reason
from pipeline.stages.compile import COMPILE_CACHE


@pytest.fixture(scope="session", autouse=True)
def shared_compiles() -> Iterator[None]:
    """The GPU suite builds each distinct engine once: it holds the compile cache between runs."""
    with COMPILE_CACHE.kept():
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = tensorrt_unavailable_reason()
    for item in items:
        if "tests/gpu/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=f"GPU suite: {reason}"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """A short table of what the fresh processes saw: policy, engines, golden check, latency."""
    from tests.gpu.test_tensorrt_bundles import REPORT

    write = terminalreporter.write_line
    accuracy = REPORT.get("bert_dynamic-fp16-accuracy", {})
    if accuracy:
        write("")
        header = f"{'bert_dynamic fp16, golden set':<44} {'vs eager fp16':>13} {'allowed':>8}"
        write(f"{header} {'eager fp16 vs fp32':>19}")
        for label, row in accuracy.items():
            write(
                f"{label:<44} {row['bundle_vs_eager_fp16']:>13.4f} {row['allowed']:>8.4f} "
                f"{row['eager_fp16_vs_fp32']:>19.4f}"
            )
    rows = [(case, r) for case, r in REPORT.items() if "engines_configured" in r]
    if not rows:
        return
    write("")
    write(f"{'bundle':<34} {'policy':<13} {'engines':>7} {'golden':>7} {'median ms':>10} {'load s':>7}")
    for case, report in rows:
        write(
            f"{case:<34} {report['policy']:<13} "
            f"{report['engines_configured']:>3}/{report['engines_in_manifest']:<3} "
            f"{'PASS' if report['golden_passed'] else 'FAIL':>7} {report['latency_ms']:>10.3f} "
            f"{report['load_seconds']:>7.2f}"
        )
        if "sequence" in report:
            sequence = report["sequence"]
            steady = ", ".join(f"{name} {ms:.3f}" for name, ms in sequence["steady_ms"].items())
            write(
                f"{'':<34} batches {' -> '.join(c['set'] for c in sequence['calls'])}: "
                f"{'PASS' if all(c['passed'] for c in sequence['calls']) else 'FAIL'}; steady ms {steady}; "
                f"alternating {sequence['alternating_ms']:.3f} ms/call "
                f"(a shape change costs {sequence['shape_change_ms']:+.3f} ms)"
            )
