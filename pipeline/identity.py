"""What makes two compiles, or two bundles, the same: read from the schema's :class:`Identity` marks.

A bundle id covers everything that can change the engines or the outputs: the config sections
marked ``engine`` and ``bundle`` (and ``bench`` when the bench stage ran), the versions of the
libraries that build and run the model (python minor, torch, torchvision, transformers, CUDA, and
the backend's own: Torch-TensorRT, TensorRT and its build), a sha256 of the weights and, when the
model's ``_target_`` is the user's own code, a sha256 of the source file that defines it. Reuse
by id is then safe: a changed model file or an upgraded library gives another id.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import site
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import pipeline
from pipeline.config.schema import Identity, PipelineConfig, Precision, Stage, keys_of
from pipeline.environment import package_version
from pipeline.quantization.precisions import spec_of
from pipeline.runtime.format import bundle_id

#: The config section that is part of an identity only for calibrated precisions.
CALIBRATION_KEY = "calibration"
#: The manifest's environment key naming the user's model source file and its sha256.
MODEL_SOURCE_KEY = "model_source"


def _calibrates(resolved: Mapping[str, Any]) -> bool:
    """True when the resolved config's precision is calibrated (its calibration decides engines)."""
    try:
        return spec_of(Precision(resolved.get("precision"))).quantized
    except ValueError:
        return False


def _identity_sections(resolved: Mapping[str, Any], kinds: tuple[Identity, ...]) -> dict[str, Any]:
    """The sections of ``resolved`` marked with ``kinds``; ``calibration`` only where it is used,
    so that fp32/fp16/bf16 bundle ids do not change with calibration settings they ignore."""
    sections = {name: resolved.get(name) for name in keys_of(*kinds)}
    if not _calibrates(resolved):
        sections.pop(CALIBRATION_KEY, None)
    return sections


def engine_identity(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The sections of a resolved config (plain data) that decide the compiled engines."""
    return _identity_sections(resolved, (Identity.engine,))


def config_identity(resolved: Mapping[str, Any], benched: bool) -> dict[str, Any]:
    """The sections of a resolved config that decide a bundle's content.

    A bundle built with the bench stage (``benched``) carries its timings in the signed
    manifest, so it is a different bundle from one built without (and from one benched with
    other settings): it gets its own id instead of replacing a published bundle.
    """
    kinds = (Identity.engine, Identity.bundle, *((Identity.bench,) if benched else ()))
    return _identity_sections(resolved, kinds)


def library_versions() -> dict[str, str]:
    """Versions of what builds and runs every model here, whatever the backend."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "torch": torch.__version__,
        "torchvision": package_version("torchvision"),
        "transformers": package_version("transformers"),
        "cuda": str(torch.version.cuda),
    }


def _installed_roots() -> list[Path]:
    """Where installed (not user) code lives: site-packages, the standard library, this package."""
    paths = {*site.getsitepackages(), site.getusersitepackages()}
    paths |= {sysconfig.get_path(name) for name in ("purelib", "platlib", "stdlib", "platstdlib")}
    roots = [Path(p).resolve() for p in paths if p]
    return [*roots, Path(pipeline.__file__).resolve().parent]


def model_source(architecture: Mapping[str, Any]) -> str | None:
    """``<module>@<sha256>`` of the source file defining ``architecture._target_``, when that is
    the user's own code; None for installed code (its version is in :func:`library_versions`) or
    where no source file can be found."""
    from hydra.utils import get_object

    target = architecture.get("_target_") if isinstance(architecture, Mapping) else None
    if not isinstance(target, str):
        return None
    try:
        found = get_object(target)
        source = inspect.getsourcefile(found) or inspect.getfile(found)
    except Exception:
        return None
    path = Path(source).resolve()
    if not path.is_file() or any(path.is_relative_to(root) for root in _installed_roots()):
        return None
    module = getattr(inspect.getmodule(found), "__name__", path.stem)
    return f"{module}@{hashlib.sha256(path.read_bytes()).hexdigest()}"


def build_environment(resolved: Mapping[str, Any], backend_environment: Mapping[str, str]) -> dict[str, str]:
    """What in the environment decides a bundle built from ``resolved`` (a config as plain data):
    library versions, the backend's own (its compiler, TensorRT build, GPU architecture) and
    the user's model source."""
    environment = {**library_versions(), **backend_environment}
    source = model_source(resolved["model"]["architecture"])
    if source is not None:
        environment[MODEL_SOURCE_KEY] = source
    return environment


def pipeline_bundle_id(
    config: PipelineConfig, resolved: Mapping[str, Any], environment: Mapping[str, str], weights: str
) -> str:
    """The id of the bundle ``config`` builds (``resolved``: the config as plain data;
    ``environment``: its :func:`build_environment`)."""
    identity = config_identity(resolved, benched=Stage.bench in config.stages)
    return bundle_id(identity, dict(environment), weights)


def engine_key(resolved: Mapping[str, Any], weights_sha256: str) -> str:
    """The identity of the engines a resolved config compiles to (the compile cache's key)."""
    payload = json.dumps(
        {"config": engine_identity(resolved), "weights": weights_sha256}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()
