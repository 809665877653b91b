"""The loaded model's contract on CPU: inputs by name, named outputs, atomic policy switches,
lifetime, devices and callers on several threads. tests/gpu/ runs the same contract on engines."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pipeline.bundle.pack import pack_bundle
from pipeline.errors import BundleError, InputValidationError, ModelClosedError
from pipeline.runtime import load_bundle
from pipeline.runtime.executor import EngineExecutor, RunnerKind
from pipeline.runtime.loaded import LoadedModel
from pipeline.runtime.policy import PolicyReport, RuntimeConfig, runtime_preset
from pipeline.runtime.types import DType, InputSpec, Precision
from pipeline.stages.package import PublishedBundle

SPECS = [
    InputSpec(name="input_ids", shape=[1, 4], dtype=DType.int64, low=0, high=10),
    InputSpec(name="token_type_ids", shape=[1, 4], dtype=DType.int64, low=0, high=2),
]


class AddModule(nn.Module):
    def forward(self, ids: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids + types, ids * 2


class FakeExecutor(EngineExecutor):
    """Counts one engine per policy application; ``refuse`` names a policy its engine refuses."""

    runner = RunnerKind.cpp

    def __init__(self, engines: int = 1, refuse: str | None = None) -> None:
        super().__init__("a stand-in")
        self.engines, self.refuse = engines, refuse
        self.applied: list[str] = []

    def configure(self, policy: RuntimeConfig, previous: RuntimeConfig | None = None) -> PolicyReport:
        if policy.name == self.refuse:
            raise RuntimeError(f"engine refused {policy.name}")
        self.applied.append(policy.name)
        self._policy = policy
        return PolicyReport(policy=policy, applied=True, engines_configured=self.engines)


def loaded(runtime: FakeExecutor | None = None, expected_engines: int | None = 1) -> LoadedModel:
    return LoadedModel(
        module=AddModule(),
        executor=runtime or FakeExecutor(),
        specs=SPECS,
        precision=Precision.fp32,
        device="cpu",
        policy="standard",
        expected_engines=expected_engines,
        output_names=("sums", "doubled"),
    )


def test_loaded_model_binds_inputs_by_declared_name_when_called_with_keywords() -> None:
    model = loaded()
    ids, types = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[0, 1, 0, 1]])
    by_name = model(token_type_ids=types, input_ids=ids)
    mixed = model(ids, token_type_ids=types)
    assert torch.equal(by_name[0], ids + types) and torch.equal(mixed[0], ids + types)


@pytest.mark.parametrize(
    ("args", "named", "message"),
    [
        ((), {"input_id": 1, "token_type_ids": 2}, "no input named 'input_id'.*did you mean 'input_ids'"),
        ((), {"input_ids": 1}, "input 'token_type_ids' not given"),
        ((1,), {"input_ids": 1, "token_type_ids": 2}, "'input_ids' given both by position and by name"),
    ],
)
def test_loaded_model_refuses_keyword_inputs_when_names_do_not_match(
    args: tuple[Any, ...], named: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputValidationError, match=message):
        loaded()(*args, **named)


def test_model_outputs_answer_to_attribute_names_when_outputs_are_named() -> None:
    outputs = loaded()(torch.ones(1, 4, dtype=torch.int64), torch.zeros(1, 4, dtype=torch.int64))
    assert outputs.doubled is outputs[1] and outputs.sums is outputs["sums"]
    with pytest.raises(AttributeError, match="no output named 'logits'"):
        _ = outputs.logits


def test_set_runtime_keeps_the_policy_in_force_when_an_engine_refuses_the_new_one() -> None:
    runtime = FakeExecutor(refuse="cudagraphs")
    model = loaded(runtime)
    with pytest.raises(RuntimeError, match="refused cudagraphs"):
        model.set_runtime("cudagraphs")
    assert model.policy.name == "standard"


def test_set_runtime_puts_previous_policy_back_when_engine_count_does_not_match() -> None:
    runtime = FakeExecutor(engines=1)
    model = loaded(runtime, expected_engines=1)
    runtime.engines = 2  # as if a graph file held an extra engine
    with pytest.raises(BundleError, match="configured 2 TensorRT engines"):
        model.set_runtime("preallocated")
    assert runtime.applied == ["standard", "preallocated", "standard"]
    assert model.policy.name == "standard"


def test_set_runtime_refuses_impossible_policy_when_graphs_and_dynamic_allocation_combine() -> None:
    model = loaded()
    impossible = RuntimeConfig(name="mine", cuda_graphs=True, dynamic_allocation=True)
    with pytest.raises(Exception, match="cannot be combined"):
        model.set_runtime(impossible)
    assert model.policy == runtime_preset("standard")


def test_loaded_model_refuses_calls_when_closed() -> None:
    model = loaded()
    with model:
        model(torch.ones(1, 4, dtype=torch.int64), torch.ones(1, 4, dtype=torch.int64))
    assert model.closed
    with pytest.raises(ModelClosedError, match="closed"):
        model(torch.ones(1, 4, dtype=torch.int64), torch.ones(1, 4, dtype=torch.int64))
    with pytest.raises(ModelClosedError):
        model.set_runtime("preallocated")
    model.close()  # idempotent


def test_loaded_model_lets_go_of_its_engines_when_closed() -> None:
    # The executor holds the engines too (TensorRT's GPU memory is freed when they are collected).
    executor = FakeExecutor()
    model = loaded(executor)
    module, held = weakref.ref(model.module), weakref.ref(executor)
    del executor
    model.close()
    gc.collect()
    assert module() is None and held() is None


def test_loaded_model_gives_each_thread_its_own_answer_when_threads_call_at_once() -> None:
    model = loaded()
    inputs = [torch.full((1, 4), i, dtype=torch.int64) for i in range(8)]
    wrong: list[int] = []
    lock = threading.Lock()

    def caller(index: int) -> None:
        for _ in range(20):
            outputs = model(inputs[index], inputs[index])
            if not torch.equal(outputs.sums, inputs[index] * 2):
                with lock:
                    wrong.append(index)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_load_bundle_removes_unpacked_directory_when_closed(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    archive = pack_bundle(cnn_bundle.path, tmp_path / "cnn.tar")
    with load_bundle(archive, runtime="standard") as model:
        unpacked = model.root
        assert unpacked.is_dir() and model.load_report["device"] == "cpu"
        model(torch.rand(2, 3, 32, 32))
    assert not unpacked.exists()


def test_load_bundle_says_file_does_not_exist_when_path_is_missing(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"nope\.tar: no such file or directory"):
        load_bundle(tmp_path / "nope.tar")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without a GPU")
def test_load_bundle_refuses_cuda_device_at_load_when_host_has_no_gpu(cnn_bundle: PublishedBundle) -> None:
    with pytest.raises(BundleError, match="no CUDA GPU is visible"):
        load_bundle(cnn_bundle.path, device="cuda")


RANGED = [
    InputSpec(name="input_ids", shape=[1, 4], dtype=DType.int64, low=0, high=10, min_value=0, max_value=99),
    InputSpec(
        name="token_type_ids", shape=[1, 4], dtype=DType.int64, low=0, high=2, min_value=0, max_value=1
    ),
]


def ranged(policy: RuntimeConfig | str = "standard") -> LoadedModel:
    return LoadedModel(
        module=AddModule(),
        executor=FakeExecutor(),
        specs=RANGED,
        precision=Precision.fp32,
        device="cpu",
        policy=policy,
        expected_engines=1,
    )


@pytest.mark.parametrize(
    ("ids", "types", "message"),
    [
        ([1, 2, 100, 4], [0, 1, 0, 1], r"input 'input_ids': value 100 outside the declared range 0\.\.99"),
        ([1, 2, 3, 4], [0, -1, 0, 1], r"input 'token_type_ids': value -1 outside the declared range 0\.\.1"),
    ],
)
def test_loaded_model_refuses_integer_values_when_outside_declared_range(
    ids: list[int], types: list[int], message: str
) -> None:
    with pytest.raises(InputValidationError, match=message):
        ranged()(torch.tensor([ids]), torch.tensor([types]))


def test_loaded_model_passes_values_unchecked_when_policy_turns_range_check_off() -> None:
    unchecked = RuntimeConfig(name="unchecked", check_value_ranges=False)
    outputs = ranged(unchecked)(torch.tensor([[1, 2, 100, 4]]), torch.tensor([[0, 1, 0, 1]]))
    assert outputs[0].tolist() == [[1, 3, 100, 5]]


def test_call_checked_on_host_refuses_inputs_when_not_on_the_model_device() -> None:
    model = loaded()
    ids, types = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[0, 1, 0, 1]])
    assert model.call_checked_on_host((ids, types)).sums.tolist() == [[1, 3, 3, 5]]
    with pytest.raises(InputValidationError, match=r"input 1: on meta, the model runs on cpu"):
        model.call_checked_on_host((ids, types.to("meta")))
    with pytest.raises(InputValidationError, match="expected 2 inputs, got 1"):
        model.call_checked_on_host((ids,))
