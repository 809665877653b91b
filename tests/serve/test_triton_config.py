"""config.pbtxt and the exported repository, without a server."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as schema

from pipeline.errors import BundleError
from pipeline.runtime.format import read_manifest
from pipeline.runtime.trust import generate_key_pair, sign_bundle
from pipeline.serve import export_triton
from pipeline.serve.triton_config import InstanceKind, read_golden_shapes, triton_config
from pipeline.stages.package import PublishedBundle
from tests.helpers import cli, flip_byte, python_snippet, sample_manifest


def config_of(bundle: Path) -> str:
    return triton_config(read_manifest(bundle), read_golden_shapes(bundle)).to_pbtxt()


def parsed(pbtxt: str) -> schema.ModelConfig:
    """``config.pbtxt`` read back with Triton's own schema, as tritonserver reads it."""
    return text_format.Parse(pbtxt, schema.ModelConfig())


def tensors(entries: Iterable[schema.ModelInput | schema.ModelOutput]) -> list[tuple[str, str, list[int]]]:
    return [(t.name, schema.DataType.Name(t.data_type), list(t.dims)) for t in entries]


def test_triton_config_batches_along_dim0_when_model_is_tiny_cnn(cnn_bundle: PublishedBundle) -> None:
    config = parsed(config_of(cnn_bundle.path))
    assert (config.name, config.backend, config.max_batch_size) == ("tiny_cnn", "python", 8)
    assert tensors(config.input) == [("images", "TYPE_FP32", [3, 32, 32])]
    assert tensors(config.output) == [("output_0", "TYPE_FP32", [10])]
    assert list(config.dynamic_batching.preferred_batch_size) == [2]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    groups = [
        (schema.ModelInstanceGroup.Kind.Name(g.kind), g.count, list(g.gpus)) for g in config.instance_group
    ]
    assert groups == [("KIND_CPU", 1, [])]


def test_triton_config_marks_shared_dims_dynamic_when_model_is_tiny_bert_dynamic(
    dynamic_bert_bundle: PublishedBundle,
) -> None:
    config = triton_config(
        read_manifest(dynamic_bert_bundle.path), read_golden_shapes(dynamic_bert_bundle.path)
    )
    assert config.max_batch_size == 8 and config.batch_dim == "batch"
    assert [(t.name, t.datatype, t.dims) for t in config.inputs] == [
        ("input_ids", "INT32", (-1,)),
        ("attention_mask", "INT32", (-1,)),
        ("token_type_ids", "INT32", (-1,)),
    ]
    # last_hidden_state follows batch and seq; pooler_output only batch; hidden size is static.
    assert [(t.name, t.dims) for t in config.outputs] == [
        ("last_hidden_state", (-1, 64)),
        ("pooler_output", (64,)),
    ]
    # opt batch is 1: a preferred size of 1 would stop the batcher from stacking requests.
    assert config.preferred_batch_sizes == ()
    assert parsed(config.to_pbtxt()).HasField("dynamic_batching")


def static_manifest(**fields: object) -> tuple[object, dict[str, list[int]]]:
    manifest = sample_manifest(
        inputs=[{"name": "x", "shape": [4, 3], "dtype": "float32"}],
        outputs=[{"index": 0, "name": None, "shape": [4, 2], "dtype": "float32"}],
        **fields,
    )
    return manifest, {"input.x": [4, 3], "output.0": [4, 2]}


def test_triton_config_lists_every_dim_without_batching_when_model_is_static() -> None:
    manifest, shapes = static_manifest()
    config = triton_config(manifest, shapes)  # type: ignore[arg-type]
    assert config.max_batch_size == 0
    assert [t.dims for t in (*config.inputs, *config.outputs)] == [(4, 3), (4, 2)]
    assert not parsed(config.to_pbtxt()).HasField("dynamic_batching")


def test_triton_config_uses_gpu_instances_and_fp16_types_when_bundle_is_cuda_fp16() -> None:
    manifest, shapes = static_manifest(device="cuda", precision="fp16", backend="tensorrt")
    manifest.outputs[0]["dtype"] = "float16"  # type: ignore[attr-defined]
    config = triton_config(manifest, shapes, gpus=(0, 1), instances_per_device=2)  # type: ignore[arg-type]
    assert config.instance_groups[0].kind is InstanceKind.KIND_GPU
    (group,) = parsed(config.to_pbtxt()).instance_group
    assert (group.kind, group.count, list(group.gpus)) == (schema.ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    assert [t.datatype for t in (*config.inputs, *config.outputs)] == ["FP16", "FP16"]


def test_export_triton_ships_bundle_with_signature_when_bundle_is_signed(
    bundle_copy: Path, tmp_path: Path
) -> None:
    generate_key_pair(tmp_path / "key.pem", tmp_path / "key.pub")
    sign_bundle(bundle_copy, (tmp_path / "key.pem").read_bytes())
    exported = export_triton(bundle_copy, tmp_path / "repo")
    version = exported.model_dir / "1"
    assert (exported.model_dir / "config.pbtxt").read_text() == config_of(bundle_copy)
    assert (version / "bundle" / "manifest.sig").read_bytes() == (bundle_copy / "manifest.sig").read_bytes()
    assert "from pipeline.serve.triton_backend import TritonPythonModel" in (version / "model.py").read_text()


def test_export_triton_refuses_when_bundle_is_tampered(bundle_copy: Path, tmp_path: Path) -> None:
    flip_byte(bundle_copy / "golden.safetensors")
    with pytest.raises(BundleError, match=r"golden\.safetensors: sha256 does not match"):
        export_triton(bundle_copy, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_export_triton_cli_writes_repository_when_bundle_is_an_archive(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    archive = tmp_path / "cnn.tar"
    shutil.make_archive(str(archive.with_suffix("")), "tar", cnn_bundle.path.parent, cnn_bundle.path.name)
    completed = cli("pipeline.serve", "export-triton", str(archive), str(tmp_path / "repo"))
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "repo" / "tiny_cnn" / "1" / "bundle.tar").is_file()
    assert "max_batch_size: 8" in completed.stdout


def test_serve_cli_exits_1_with_one_line_when_bundle_is_tampered(bundle_copy: Path) -> None:
    flip_byte(bundle_copy / "golden.safetensors")
    completed = cli("pipeline.serve", str(bundle_copy), "--port", "0")
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        "error: golden.safetensors: sha256 does not match the manifest (modified or corrupt)"
    ]


def test_pipeline_serve_imports_no_build_side_when_exporting_and_checking(
    cnn_bundle: PublishedBundle, tmp_path: Path
) -> None:
    probe = (
        "import sys\n"
        "from pipeline.serve import export_triton, check_server\n"
        "from pipeline.serve.serving import ServedBundle\n"
        "from pipeline.serve.server import TritonServer\n"
        f"export_triton({str(cnn_bundle.path)!r}, {str(tmp_path / 'repo')!r})\n"
        "heavy = ('hydra', 'omegaconf', 'torch_tensorrt', 'pipeline.stages', 'pipeline.config',\n"
        "         'pipeline.runner', 'rich', 'transformers', 'matplotlib')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    completed = python_snippet(probe)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == "[]"
