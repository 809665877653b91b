"""Failed stages explained: hints from real torch.export failures, and the API's StageFailure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline import cli
from pipeline.cli import JobContext
from pipeline.config import compose
from pipeline.errors import StageFailure, StageInterrupted
from pipeline.failures import failure_hint, write_failure_log
from pipeline.stages import steps
from tests.helpers import run


class TwoInputs(nn.Module):
    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return left + right


def export_error(model: nn.Module, inputs: tuple[torch.Tensor, ...], **kwargs: object) -> Exception:
    with pytest.raises(Exception) as caught:
        torch.export.export(model, inputs, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_failure_hint_quotes_torch_export_fix_when_separate_dims_must_be_equal() -> None:
    left, right = torch.export.Dim("left_batch"), torch.export.Dim("right_batch")
    error = export_error(
        TwoInputs(), (torch.ones(2, 3), torch.ones(2, 3)), dynamic_shapes=({0: left}, {0: right})
    )
    hint = failure_hint(error)
    assert hint is not None and hint.startswith("torch.export suggests: ")
    assert "right_batch = left_batch" in hint and "draft_export" not in hint


def test_failure_hint_suggests_eager_attention_when_engine_cannot_create_execution_context() -> None:
    # The message Torch-TensorRT 2.11 raised for BERT with SDPA attention on an H200 (TensorRT-RTX 1.4).
    error = RuntimeError(
        "[Error thrown at core/runtime/TRTEngine.cpp:143] Expected (exec_ctx.get() != nullptr) to be "
        "true but got false\nUnable to create TensorRT execution context"
    )
    hint = failure_hint(error)
    assert hint is not None and "attn_implementation=eager" in hint


def test_failure_hint_is_none_when_no_fix_is_known() -> None:
    assert failure_hint(ValueError("something else entirely")) is None


def test_run_pipeline_raises_stage_failure_chaining_cause_when_export_fails(tmp_path: Path) -> None:
    with pytest.raises(StageFailure) as caught:
        run(tmp_path, "model=tiny_cnn", "model.architecture._target_=tests.helpers.data_dependent_model")
    failure = caught.value
    assert failure.stage == "compile" and failure.model == "tiny_cnn"
    assert failure.__cause__ is failure.cause and "data-dependent" in str(failure.cause)
    assert failure.hint is not None and "torch.cond" in failure.hint
    assert not [p for p in (tmp_path / "bundles").glob("*") if not p.name.startswith(".")]
    log = write_failure_log(failure, tmp_path / "run")
    assert "stage: compile" in log.read_text() and "Traceback (most recent call last)" in log.read_text()


def test_cli_run_prints_one_line_exits_130_and_logs_traceback_when_interrupted_during_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted_compile(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(steps, "compile_model", interrupted_compile)
    job = JobContext(overrides=[], output_dir=tmp_path / "run", original_cwd=tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.run(compose(["model=tiny_cnn", f"artifacts_dir={tmp_path}"]), job)
    assert exited.value.code == 130
    stderr = capsys.readouterr().err
    assert stderr.strip().splitlines()[-1] == "interrupted (Ctrl-C) during compile; nothing published"
    assert "Traceback" not in stderr and "failed after" not in stderr
    log = (tmp_path / "run" / "error.log").read_text()
    assert "stage: compile" in log and "KeyboardInterrupt" in log and "Traceback" in log
    assert list((tmp_path / "bundles").iterdir()) == [tmp_path / "bundles" / ".locks"]


def test_run_pipeline_raises_keyboard_interrupt_naming_stage_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted_compile(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(steps, "compile_model", interrupted_compile)
    with pytest.raises(KeyboardInterrupt) as caught:
        run(tmp_path, "model=tiny_cnn")
    assert isinstance(caught.value, StageInterrupted) and caught.value.stage == "compile"


def test_tensorrt_backend_says_why_in_one_line_when_torch_tensorrt_is_imported_after_a_bundle_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from pipeline.backends import tensorrt as backend
    from pipeline.errors import BackendUnavailableError
    from pipeline.runtime import tensorrt as runtime

    monkeypatch.delitem(sys.modules, "torch_tensorrt", raising=False)
    monkeypatch.setattr(runtime, "_runtime_library_loaded", True)
    with pytest.raises(
        BackendUnavailableError, match="cannot be imported after a TensorRT bundle was loaded"
    ):
        backend._torch_tensorrt()
