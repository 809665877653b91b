"""Why BERT is built with ``attn_implementation: eager``: documented on the GPU, so that the day a
TensorRT-RTX release compiles SDPA attention for this GPU, this test fails and says so.

On an H200 with torch-tensorrt-rtx 2.11 and TensorRT-RTX 1.4, BERT with SDPA attention converts
and builds, then TensorRT-RTX's JIT fails to create the execution context: ``Myelin ...
MyelinCheckException: cudnn_graph_utils.h:405: CHECK(false) failed. cuDNN graph compilation
failed`` (TensorRT-RTX does not list SM 9.0 as supported). The run ends in the pipeline's failure
block with a hint, and nothing is published. ``compile.decompose_attention=true`` lowers SDPA to
matmuls and softmax instead of one IAttention layer: that builds, and matches eager PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.errors import StageFailure
from tests.helpers import run

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.gpu_extended  # documents a TensorRT-RTX limitation; make test-gpu-full runs it
@pytest.mark.skipif(not HOPPER, reason="documents TensorRT-RTX on Hopper (SM 9.x)")
def test_bert_sdpa_attention_fails_to_create_execution_context_when_built_with_tensorrt_rtx_on_hopper(
    tmp_path: Path,
) -> None:
    with pytest.raises(StageFailure) as caught:
        run(
            tmp_path,
            "model=tiny_bert",
            "precision=fp16",
            "backend=tensorrt",
            "model.architecture.attn_implementation=sdpa",
        )
    failure = caught.value
    assert failure.stage == "compile", "SDPA attention builds and runs now: switch BERT to sdpa"
    assert "Unable to create TensorRT execution context" in str(failure.cause)
    assert failure.hint is not None and "attn_implementation=eager" in failure.hint
    assert not [p for p in (tmp_path / "bundles").glob("*") if not p.name.startswith(".")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bert_sdpa_attention_builds_and_matches_eager_when_decomposed(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "model=tiny_bert",
        "precision=fp16",
        "backend=tensorrt",
        "model.architecture.attn_implementation=sdpa",
        "compile.decompose_attention=true",
    )
    assert result.verified is not None and result.verified.report.passed
    assert result.bundle is not None
    assert result.bundle.manifest.compile_settings["decompose_attention"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bert_engine_matches_eager_when_built_with_full_tiling_search(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "model=tiny_bert",
        "precision=fp16",
        "backend=tensorrt",
        "compile.tiling_optimization_level=full",
        "compile.optimization_level=5",
    )
    assert result.verified is not None and result.verified.report.passed
    assert result.bundle is not None
    settings = result.bundle.manifest.compile_settings
    assert (settings["tiling_optimization_level"], settings["optimization_level"]) == ("full", 5)
