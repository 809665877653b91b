"""The project's exceptions. Each carries a one-line message meant for the user."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error this project raises on purpose."""

    exit_code = 1


class ConfigError(PipelineError):
    """A configuration that cannot run: bad key, bad value or contradictory combination."""

    exit_code = 2


class BackendUnavailableError(ConfigError):
    """The requested backend cannot run on this host (no GPU, torch_tensorrt missing, ...)."""


class VerificationError(PipelineError):
    """The reloaded artifact does not match eager PyTorch within tolerance."""


class BundleError(PipelineError):
    """A bundle that is malformed, tampered with, or incompatible with this host."""


class InputValidationError(PipelineError, ValueError):
    """Inputs passed to a loaded model that do not match its declared input specs."""


class NotRefittableError(ConfigError):
    """A bundle whose engines cannot take new weights (immutable weights, no engines, ...)."""


class WeightsMismatchError(ConfigError):
    """New weights that do not fit the bundle's architecture (missing, unexpected, mis-shaped)."""
