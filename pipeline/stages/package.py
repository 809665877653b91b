"""package: write golden data, config and manifest next to the model, then publish atomically."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save

from pipeline.bundle.store import BundleStore
from pipeline.config.schema import InputSpec
from pipeline.runtime.format import (
    CONFIG_NAME,
    GOLDEN_NAME,
    GoldenSet,
    Manifest,
    describe_files,
    golden_tensors,
    write_manifest,
)


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
    golden_sets: Mapping[str, GoldenSet],
) -> PublishedBundle:
    """Complete the staging directory (golden sets, config, manifest) and rename it into place.

    ``golden_sets``: (inputs in ``specs`` order, reference outputs) by set name, ``opt`` first.
    """
    # safetensors' save_file creates its file 0600; written here, it gets the umask like the rest.
    golden = save(golden_tensors([spec.name for spec in specs], golden_sets))
    (staging / GOLDEN_NAME).write_bytes(golden)
    (staging / CONFIG_NAME).write_text(config_yaml, encoding="utf-8")
    manifest.files = describe_files(staging)
    write_manifest(staging, manifest)
    return PublishedBundle(path=store.publish(staging, name, manifest.bundle_id), manifest=manifest)
