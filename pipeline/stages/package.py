"""package: write golden data, config and manifest next to the model, then publish atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.bundle.format import (
    CONFIG_NAME,
    GOLDEN_INPUT_PREFIX,
    GOLDEN_NAME,
    GOLDEN_OUTPUT_PREFIX,
    Manifest,
    describe_files,
    write_manifest,
)
from pipeline.bundle.store import BundleStore
from pipeline.config.schema import InputSpec


@dataclass
class PublishedBundle:
    """A bundle under its final name."""

    path: Path
    manifest: Manifest
    reused: bool = False


def package_bundle(
    store: BundleStore,
    staging: Path,
    name: str,
    manifest: Manifest,
    config_yaml: str,
    specs: list[InputSpec],
    golden_inputs: tuple[torch.Tensor, ...],
    golden_outputs: tuple[torch.Tensor, ...],
) -> PublishedBundle:
    """Complete the staging directory (golden data, config, manifest) and rename it into place."""
    tensors = {
        GOLDEN_INPUT_PREFIX + spec.name: tensor.detach().cpu().contiguous()
        for spec, tensor in zip(specs, golden_inputs, strict=True)
    }
    tensors.update(
        {f"{GOLDEN_OUTPUT_PREFIX}{i}": t.detach().cpu().contiguous() for i, t in enumerate(golden_outputs)}
    )
    save_file(tensors, str(staging / GOLDEN_NAME))
    (staging / CONFIG_NAME).write_text(config_yaml, encoding="utf-8")
    manifest.files = describe_files(staging)
    write_manifest(staging, manifest)
    return PublishedBundle(path=store.publish(staging, name, manifest.bundle_id), manifest=manifest)
