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


class StorageError(PipelineError):
    """A place to write that cannot be written: not a directory, not creatable, not writable, full."""


class InputValidationError(PipelineError, ValueError):
    """Inputs passed to a loaded model that do not match its declared input specs."""


class ModelClosedError(PipelineError, RuntimeError):
    """A call on a loaded model after :meth:`~pipeline.runtime.LoadedModel.close`."""


class NotRefittableError(ConfigError):
    """A bundle whose engines cannot take new weights (immutable weights, no engines, ...)."""


class WeightsMismatchError(ConfigError):
    """New weights that do not fit the bundle's architecture (missing, unexpected, mis-shaped)."""


class StageFailure(PipelineError):
    """An unexpected exception inside a pipeline stage, with what a user needs to act on it.

    ``cause`` is the original exception (also chained as ``__cause__``); ``hint`` a known fix.
    """

    def __init__(self, stage: str, model: str, cause: BaseException, hint: str | None = None) -> None:
        self.stage, self.model, self.cause, self.hint = stage, model, cause, hint
        super().__init__(f"{stage} failed for model {model}: {first_line(cause)}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, Kubernetes, SLURM), raised where the program is while
    :func:`pipeline.signals.sigterm_raises` is open: a ``KeyboardInterrupt``, so the same cleanup
    as Ctrl-C runs. The command line exits with :attr:`exit_code`, the shell's code for SIGTERM."""

    exit_code = 143
    signal_name = "SIGTERM"

    def __init__(self) -> None:
        super().__init__("interrupted (SIGTERM)")


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a pipeline stage: still a ``KeyboardInterrupt``, naming the stage
    it stopped and the signal.

    Staging is removed before it propagates, so nothing from the interrupted run is published.
    The command line exits with :attr:`exit_code`: 130 for Ctrl-C (SIGINT), 143 for SIGTERM.
    """

    def __init__(self, stage: str, terminated: bool = False) -> None:
        self.stage = stage
        self.signal_name = Terminated.signal_name if terminated else "Ctrl-C"
        self.exit_code = Terminated.exit_code if terminated else 130
        super().__init__(f"interrupted ({self.signal_name}) during {stage}; nothing published")


def interrupt_exit_code(interrupt: BaseException) -> int:
    """The shell's exit code for a stop: 143 for SIGTERM, 130 for Ctrl-C."""
    return int(getattr(interrupt, "exit_code", 130))


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), as users see it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def first_line(error: BaseException) -> str:
    """``Type: first non-empty line of the message``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
