"""The stage protocol: steps that declare what they require and produce, run in a given order.

Each step (in the spirit of Triton Model Navigator's commands) names the fields of
:class:`Work` it reads (``requires``) and the one it fills in (``produces``, a typed output);
:func:`run_steps` checks that every requirement is there, times the step (or notes why it was
skipped) and records a :class:`StepRecord`. The build (``pipeline.runner``) and a refit
(``pipeline.refit.workflow``) are two lists of steps sharing reload, verify and package.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from pipeline.backends.base import Backend, CompiledModel
from pipeline.bundle.store import BundleStore
from pipeline.config.schema import InputSpec, PipelineConfig, Precision, RuntimeConfig
from pipeline.console import StageClock, console
from pipeline.errors import BundleError
from pipeline.runtime.format import check_files, read_manifest
from pipeline.runtime.loaded import LoadedModel
from pipeline.stages.bench import BenchReport
from pipeline.stages.build import BuiltModel
from pipeline.stages.package import PublishedBundle
from pipeline.stages.serialize import SerializedModel
from pipeline.stages.verify import VerifiedModel

T = TypeVar("T")


class StepStatus(str, Enum):
    """How a step ended."""

    done = "done"
    skipped = "skipped"
    failed = "failed"


@dataclass
class StepRecord:
    """One step's name, status, time and (when skipped) why."""

    name: str
    status: StepStatus
    seconds: float = 0.0
    note: str = ""


@dataclass
class Work:
    """What the steps of one build or refit share: the run's inputs and each step's output."""

    config: PipelineConfig
    resolved: dict[str, Any]  # the config as recorded in the bundle (plain data)
    backend: Backend
    device: torch.device
    store: BundleStore
    policy: RuntimeConfig
    specs: list[InputSpec]
    precision: Precision
    overrides: list[str] = field(default_factory=list)
    #: Known once the model is built (its weights' sha256 is part of it).
    bundle_id: str = ""
    #: Where the bundle is assembled; set once the bundle's lock is held.
    staging: Path | None = None
    environment: dict[str, str] = field(default_factory=dict)
    built: BuiltModel | None = None
    compiled: CompiledModel | None = None
    #: Timings recorded beside the steps' own: a compile reused from an earlier run (what it
    #: cost then), a refit's sub-steps.
    extra_timings: dict[str, float] = field(default_factory=dict)
    serialized: SerializedModel | None = None
    expected_engines: int = 0
    loaded: LoadedModel | None = None
    verified: VerifiedModel | None = None
    bench: BenchReport | None = None
    bundle: PublishedBundle | None = None
    records: list[StepRecord] = field(default_factory=list)
    clock: StageClock = field(default_factory=StageClock)


def need(value: T | None, name: str) -> T:
    """``value``, which a step declared it requires (``name``); a missing one is a wiring bug."""
    if value is None:
        raise RuntimeError(f"a step ran before '{name}' was produced")
    return value


class Step(Protocol):
    """One stage of a build or refit."""

    @property
    def name(self) -> Enum:
        """Shown and timed under this name (a :class:`Stage` or a refit step)."""
        ...

    @property
    def requires(self) -> tuple[str, ...]:
        """Fields of :class:`Work` that must be filled in before the step runs."""
        ...

    @property
    def produces(self) -> str:
        """The field of :class:`Work` the step's output goes to."""
        ...

    @property
    def releases(self) -> tuple[str, ...]:
        """Fields of :class:`Work` no later step needs: dropped once the step ends (its outputs
        freed, e.g. a reloaded model's engines), whether it succeeded or not."""
        ...

    def detail(self, work: Work) -> str:
        """What the progress line says beside the name."""
        ...

    def reuse(self, work: Work) -> tuple[Any, str] | None:
        """An output made earlier (and why it may be reused), or None to run the step."""
        ...

    def run(self, work: Work) -> Any:
        """Do the step; its return value goes to ``work.<produces>``."""
        ...


class StepDefaults:
    """What most steps say, reuse and release: nothing beside their name, nothing made earlier,
    nothing."""

    releases: tuple[str, ...] = ()

    def detail(self, work: Work) -> str:
        """What the progress line says beside the name."""
        return ""

    def reuse(self, work: Work) -> tuple[Any, str] | None:
        """An output made earlier (and why it may be reused), or None to run the step."""
        return None


def run_steps(steps: Iterable[Step], work: Work) -> None:
    """Run ``steps`` in order, each after checking what it requires; record status and time."""
    for step in steps:
        missing = [name for name in step.requires if getattr(work, name) is None]
        if missing:
            raise RuntimeError(
                f"step {step.name.value} requires {', '.join(missing)}, produced by no step before it"
            )
        reused = step.reuse(work)
        if reused is not None:
            output, why = reused
            work.clock.skipped(step.name, why)
            work.records.append(StepRecord(step.name.value, StepStatus.skipped, note=why))
        else:
            try:
                with work.clock.stage(step.name, step.detail(work)):
                    output = step.run(work)
            except BaseException:
                work.records.append(
                    StepRecord(step.name.value, StepStatus.failed, work.clock.seconds[step.name.value])
                )
                raise
            finally:
                for released in step.releases:
                    setattr(work, released, None)
            work.records.append(
                StepRecord(step.name.value, StepStatus.done, work.clock.seconds[step.name.value])
            )
        setattr(work, step.produces, output)


def intact_bundle(store: BundleStore, bundle_id: str) -> PublishedBundle | None:
    """The published bundle ``bundle_id``, if there is one and every file still matches its manifest.

    Reuse hashes every file again (streamed) against the manifest, whose own digest is checked
    too: a damaged bundle is never handed back as built. It is reported in one line and None is
    returned, so the caller builds it again in its place.
    """
    path = store.find(bundle_id)
    if path is None:
        return None
    try:
        manifest = read_manifest(path)
        check_files(path, manifest, ())
        if manifest.bundle_id != bundle_id or not manifest.verification.get("passed"):
            raise BundleError(f"manifest.json: not the verified bundle {bundle_id}")
    except BundleError as damage:
        console.print(f"[yellow]bundle {bundle_id} is damaged ({damage}); building it again[/]")
        return None
    return PublishedBundle(path, manifest, reused=True)


@contextmanager
def staging_for(store: BundleStore, bundle_id: str) -> Iterator[Path]:
    """A staging directory for ``bundle_id``, removed afterwards (published or not)."""
    staging = store.staging_dir(bundle_id)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_or_reuse(
    store: BundleStore, bundle_id: str, force: bool, build: Callable[[Path], T]
) -> PublishedBundle | T:
    """Under the bundle's lock: the intact published bundle (unless ``force``), else ``build``
    run on a fresh staging directory."""
    with store.lock(bundle_id):
        existing = None if force else intact_bundle(store, bundle_id)
        if existing is not None:
            return existing
        with staging_for(store, bundle_id) as staging:
            return build(staging)
