"""The deployment runtime: everything a host needs to load, check and run a bundle.

Deployment code imports this package and nothing else of ``pipeline``. It imports none of the
build side (config loading, stages, the model zoo, the runner), and none of Hydra, omegaconf,
matplotlib, transformers, torchvision or ``torch_tensorrt``'s Python package; a test in a fresh
process holds it to that. The build side imports it, never the reverse.

    from pipeline.runtime import load_bundle

    with load_bundle("bert.tar", runtime="cudagraphs", device="cuda:0") as model:
        outputs = model(input_ids=ids, token_type_ids=types)
"""

from __future__ import annotations

from pipeline.errors import BundleError, InputValidationError, ModelClosedError, PipelineError
from pipeline.runtime.format import Manifest
from pipeline.runtime.loaded import LoadedModel, ModelOutputs
from pipeline.runtime.loader import LoadedBundle, load_bundle, open_bundle, verify_bundle, verify_loaded
from pipeline.runtime.policy import PRESETS, RuntimeConfig, runtime_preset
from pipeline.runtime.trust import TrustPolicy

__all__ = [
    "PRESETS",
    "BundleError",
    "InputValidationError",
    "LoadedBundle",
    "LoadedModel",
    "Manifest",
    "ModelClosedError",
    "ModelOutputs",
    "PipelineError",
    "RuntimeConfig",
    "TrustPolicy",
    "load_bundle",
    "open_bundle",
    "runtime_preset",
    "verify_bundle",
    "verify_loaded",
]
