"""The raw-engine split: a compiled graph's engines out as bytes, back in as direct operator calls.

Engine modules and the engine operator are faked here (plain modules and a Python function);
tests/gpu/ runs the same functions on Torch-TensorRT engines.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.fx import GraphModule

from pipeline.errors import BundleError
from pipeline.runtime.engine_graph import (
    EngineDescription,
    EngineRecord,
    EngineSlot,
    attach_engines,
    escaping_engines,
    load_graph,
    split_engines,
)


class FakeEngineModule(nn.Module):
    """Stands for a TorchTensorRTModule: adds ``offset``; returns one or two outputs."""

    def __init__(self, offset: float, outputs: int) -> None:
        super().__init__()
        self.offset, self.outputs = offset, outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        results = tuple(x + self.offset * (i + 1) for i in range(self.outputs))
        return results[0] if self.outputs == 1 else results


class Compiled(nn.Module):
    """Engine, PyTorch fallback with weights, engine: the shape partitioning produces."""

    def __init__(self) -> None:
        super().__init__()
        self._run_on_acc_0 = FakeEngineModule(1.0, outputs=2)
        self._run_on_gpu_1 = nn.Linear(4, 4)
        self._run_on_acc_2 = FakeEngineModule(10.0, outputs=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self._run_on_acc_0(x)
        return self._run_on_acc_2(self._run_on_gpu_1(a)), b


class LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return isinstance(module, FakeEngineModule) or super().is_leaf_module(module, name)


def compiled_graph() -> GraphModule:
    root = Compiled().eval()
    return GraphModule(root, LeafTracer().trace(root))


def describe(module: nn.Module) -> EngineDescription | None:
    if not isinstance(module, FakeEngineModule):
        return None
    return EngineDescription([f"abi-{module.offset}", str(module.offset).encode()], 1, module.outputs)


class FakeEngine:
    def __init__(self, record: EngineRecord, engine_bytes: bytes) -> None:
        self.offset = float(engine_bytes.decode())
        self.fields = record.constructor_args(engine_bytes)


def fake_execute(inputs: list[torch.Tensor], engine: FakeEngine) -> list[torch.Tensor]:
    return [inputs[0] + engine.offset * (i + 1) for i in range(2)]


def split_and_load(
    compiled: GraphModule | None = None,
) -> tuple[GraphModule, dict[str, tuple[EngineRecord, bytes]]]:
    split = split_engines(compiled if compiled is not None else compiled_graph(), describe)
    return load_graph(split.graph_bytes, torch.device("cpu")), {r.attribute: (r, b) for r, b in split.engines}


def test_split_engines_keeps_engine_bytes_out_of_graph_and_fields_as_data_when_saved() -> None:
    split = split_engines(compiled_graph(), describe)
    records = {record.attribute: (record, data) for record, data in split.engines}
    assert set(records) == {"_run_on_acc_0_engine", "_run_on_acc_2_engine"}
    record, data = records["_run_on_acc_0_engine"]
    assert data == b"1.0" and record.serialized_info == ["abi-1.0", ""] and record.outputs == 2
    assert record.file == "engines/_run_on_acc_0.engine"
    assert b"abi-1.0" not in split.graph_bytes
    assert EngineRecord.from_dict(record.to_dict()) == record


def test_attach_engines_reproduces_compiled_outputs_and_calls_operator_directly_when_loaded() -> None:
    x = torch.randn(2, 4)
    compiled = compiled_graph()
    expected = compiled(x)
    graph, engines = split_and_load(compiled)
    assert {type(m) for m in graph.modules()} >= {EngineSlot}
    attach_engines(graph, {name: FakeEngine(r, b) for name, (r, b) in engines.items()}, fake_execute)
    assert not any(isinstance(m, EngineSlot) for m in graph.modules())
    assert "fake_execute" in graph.code and "_run_on_acc_0_engine" in graph.code
    for got, want in zip(graph(x), expected, strict=True):
        torch.testing.assert_close(got, want)


class IntermediateEngine(nn.Module):
    """An engine whose outputs feed only the next engine, and one whose output leaves by a view."""

    def __init__(self) -> None:
        super().__init__()
        self._run_on_acc_0 = FakeEngineModule(1.0, outputs=2)
        self._run_on_acc_2 = FakeEngineModule(10.0, outputs=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self._run_on_acc_0(x)
        return self._run_on_acc_2(a).view(-1)


def test_escaping_engines_lists_engines_whose_outputs_leave_the_call_when_graph_returns_them() -> None:
    graph, engines = split_and_load()  # engine 0 returns one output directly, engine 2 via the linear
    attach_engines(graph, {name: FakeEngine(r, b) for name, (r, b) in engines.items()}, fake_execute)
    assert escaping_engines(graph, fake_execute) == {"_run_on_acc_0_engine", "_run_on_acc_2_engine"}


def test_escaping_engines_leaves_out_engine_when_only_another_engine_reads_its_outputs() -> None:
    root = IntermediateEngine().eval()
    graph, engines = split_and_load(GraphModule(root, LeafTracer().trace(root)))
    attach_engines(graph, {name: FakeEngine(r, b) for name, (r, b) in engines.items()}, fake_execute)
    # Engine 2's output leaves through a view: it must count (a view aliases the engine's buffer).
    assert escaping_engines(graph, fake_execute) == {"_run_on_acc_2_engine"}


def test_attach_engines_refuses_when_manifest_lists_other_engines() -> None:
    graph, engines = split_and_load()
    only_one = {name: FakeEngine(r, b) for name, (r, b) in list(engines.items())[:1]}
    with pytest.raises(BundleError, match="_run_on_acc_2_engine"):
        attach_engines(graph, only_one, fake_execute)


def test_engine_slot_refuses_to_run_when_engine_never_attached() -> None:
    graph, _ = split_and_load()
    with pytest.raises(RuntimeError, match="was not attached"):
        graph(torch.randn(2, 4))


@pytest.mark.parametrize(
    "entry",
    [
        {"attribute": "x y", "file": "e", "engine_index": 0, "outputs": 1, "serialized_info": [""]},
        {"attribute": "a", "file": "e", "engine_index": 5, "outputs": 1, "serialized_info": [""]},
        {"attribute": "a", "file": "e", "engine_index": 0, "outputs": 0, "serialized_info": [""]},
        {"attribute": "a", "file": "e", "engine_index": 0, "outputs": 1, "serialized_info": [3]},
        {"attribute": "a", "file": "e"},
    ],
)
def test_engine_record_rejects_malformed_manifest_entry_when_parsed(entry: dict[str, object]) -> None:
    with pytest.raises(BundleError, match="malformed engine entry"):
        EngineRecord.from_dict(entry)


def test_split_engines_refuses_when_module_is_not_a_graph_module() -> None:
    with pytest.raises(TypeError, match="GraphModule"):
        split_engines(nn.Linear(2, 2), describe)


class Colliding(nn.Module):
    """Two engine modules whose names flatten to the same bundle name (``sub.b`` and ``sub_b``)."""

    def __init__(self) -> None:
        super().__init__()
        self.sub = nn.Module()
        self.sub.b = FakeEngineModule(1.0, outputs=1)
        self.sub_b = FakeEngineModule(2.0, outputs=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sub_b(self.sub.b(x))


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._run_on_acc_0 = FakeEngineModule(1.0, outputs=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run_on_acc_0(self._run_on_acc_0(x))


def test_split_engines_refuses_when_two_engines_would_share_a_file_name() -> None:
    root = Colliding().eval()
    with pytest.raises(ValueError, match="would share the name 'sub_b_engine'"):
        split_engines(GraphModule(root, LeafTracer().trace(root)), describe)


def test_split_engines_stores_engine_once_when_graph_calls_it_twice() -> None:
    root = CalledTwice().eval()
    split = split_engines(GraphModule(root, LeafTracer().trace(root)), describe)
    assert [record.attribute for record, _ in split.engines] == ["_run_on_acc_0_engine"]
    module = load_graph(split.graph_bytes, torch.device("cpu"))
    record, data = split.engines[0]
    attach_engines(module, {record.attribute: FakeEngine(record, data)}, fake_execute)
    x = torch.ones(2, 4)
    assert torch.equal(module(x), root(x))
