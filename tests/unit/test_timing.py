"""Side-by-side latency measurement."""

from __future__ import annotations

import pytest

from pipeline.timing import compare_latency


@pytest.mark.parametrize(("iterations", "rounds"), [(10, 3), (7, 5), (3, 10), (1, 1)])
def test_compare_latency_times_exactly_the_requested_calls_when_split_into_rounds(
    iterations: int, rounds: int
) -> None:
    counts = {"a": 0, "b": 0}

    def call(name: str) -> None:
        counts[name] += 1

    result = compare_latency(
        {"a": lambda: call("a"), "b": lambda: call("b")}, warmup=2, iterations=iterations, rounds=rounds
    )
    assert counts == {"a": iterations + 2, "b": iterations + 2}
    assert result["a"].iterations == result["b"].iterations == iterations


def test_compare_latency_interleaves_variants_when_rounds_exceed_one() -> None:
    order: list[str] = []
    compare_latency(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=0, iterations=4, rounds=2
    )
    assert order == ["a", "a", "b", "b", "a", "a", "b", "b"]


def test_compare_latency_prepares_shared_state_before_each_round_when_variants_share_it() -> None:
    state = {"mode": ""}
    seen: list[tuple[str, str]] = []
    calls = {"a": lambda: seen.append(("a", state["mode"])), "b": lambda: seen.append(("b", state["mode"]))}
    prepare = {"a": lambda: state.update(mode="A"), "b": lambda: state.update(mode="B")}
    compare_latency(calls, warmup=1, iterations=4, rounds=2, prepare=prepare, settle=1)
    assert all(mode == name.upper() for name, mode in seen)


def test_compare_latency_keeps_warming_up_until_warmup_seconds_have_passed_when_given() -> None:
    import time

    counts = {"fast": 0}

    def call() -> None:
        counts["fast"] += 1
        time.sleep(0.001)

    compare_latency({"fast": call}, warmup=2, iterations=3, rounds=1, warmup_s=0.1)
    assert counts["fast"] >= 3 + 40  # far more than the 2 counted warm-up calls: 0.1 s of 1 ms calls
    counts["fast"] = 0
    compare_latency({"fast": call}, warmup=2, iterations=3, rounds=1)
    assert counts["fast"] == 2 + 3
