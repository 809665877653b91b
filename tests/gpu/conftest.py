"""GPU suite: skipped cleanly unless a CUDA GPU and torch_tensorrt are both present."""

from __future__ import annotations

import pytest

from pipeline.backends import tensorrt_unavailable_reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = tensorrt_unavailable_reason()
    for item in items:
        if "tests/gpu/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=f"GPU suite: {reason}"))
