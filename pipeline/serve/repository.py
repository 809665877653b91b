"""``export-triton``: a Triton model repository that serves one bundle with the Python backend.

Layout (Triton's)::

    REPO_DIR/<model_name>/
        config.pbtxt          from the manifest (pipeline.serve.triton_config)
        1/model.py            Python backend: loads the bundle, golden check, then serves
        1/bundle/ or 1/bundle.tar[.gz]   the bundle as shipped, its signature included

The bundle is checked (manifest, every file's sha256, signature under this host's trust policy)
before anything is written, and checked again by every instance that loads it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from pipeline.errors import BundleError
from pipeline.runtime import open_bundle
from pipeline.runtime.archive import release_unpacked
from pipeline.runtime.format import Manifest
from pipeline.serve.triton_config import TritonModelConfig, read_golden_shapes, triton_config

#: Triton's version directory: the repository holds one version of the model.
MODEL_VERSION = "1"
BUNDLE_STEM = "bundle"
CONFIG_FILE = "config.pbtxt"


@dataclass(frozen=True)
class ExportedModel:
    """What :func:`export_triton` wrote."""

    repository: Path
    model_dir: Path
    config: TritonModelConfig
    manifest: Manifest


def export_triton(
    bundle: str | Path,
    repository: str | Path,
    *,
    model_name: str | None = None,
    instances_per_device: int = 1,
    gpus: tuple[int, ...] = (),
    adjust: Callable[[TritonModelConfig], TritonModelConfig] | None = None,
) -> ExportedModel:
    """Write a Triton model repository for ``bundle`` (directory, .tar or .tar.gz) under
    ``repository``; refuses a bundle that fails its integrity or signature checks, and a model
    directory that already exists. ``adjust`` changes the derived configuration (e.g. the
    batching and instances ``tune`` chose)."""
    source = Path(bundle)
    opened = open_bundle(source)
    root, manifest = opened.root, opened.manifest
    try:
        config = triton_config(
            manifest, read_golden_shapes(root), instances_per_device=instances_per_device, gpus=gpus
        )
    finally:
        release_unpacked(root)
    if adjust is not None:
        config = adjust(config)
    if model_name is not None:
        config = replace(config, name=model_name)
    repo = Path(repository)
    model_dir = repo / config.name
    if model_dir.exists():
        raise BundleError(f"{model_dir}: already exists; export to an empty repository or remove it")
    version_dir = model_dir / MODEL_VERSION
    version_dir.mkdir(parents=True)
    if source.is_dir():
        shutil.copytree(source, version_dir / BUNDLE_STEM)
    else:
        suffix = ".tar.gz" if source.name.endswith(".tar.gz") else ".tar"
        shutil.copy2(source, version_dir / f"{BUNDLE_STEM}{suffix}")
    shim = resources.files("pipeline.serve").joinpath("model_shim.py").read_text(encoding="utf-8")
    (version_dir / "model.py").write_text(shim, encoding="utf-8")
    (model_dir / CONFIG_FILE).write_text(config.to_pbtxt(), encoding="utf-8")
    return ExportedModel(repository=repo, model_dir=model_dir, config=config, manifest=manifest)


def bundle_in(version_dir: Path) -> Path:
    """The bundle an exported model version holds (directory or archive)."""
    for candidate in (BUNDLE_STEM, f"{BUNDLE_STEM}.tar", f"{BUNDLE_STEM}.tar.gz"):
        if (version_dir / candidate).exists():
            return version_dir / candidate
    raise BundleError(f"{version_dir}: holds no bundle ({BUNDLE_STEM}/ or {BUNDLE_STEM}.tar)")


def models_in(repository: Path) -> list[str]:
    """Names of the models in a Triton model repository (directories with a config.pbtxt)."""
    return sorted(p.parent.name for p in repository.glob(f"*/{CONFIG_FILE}"))
