"""``python -m pipeline.serve tune``: the serving configuration that meets a p99 latency target at
the highest throughput, measured on a real tritonserver.

One server runs in explicit model-control mode. Each configuration of the grid (maximum batch
and queue delay of Triton's dynamic batcher, instances per device, runtime policy) is loaded
through Triton's model-control API with a configuration of its own, then driven by a closed-loop
load generator (tritonclient's asyncio client) at concurrency 1, 2, 4, ... until its p99 passes
the target. Requests are the bundle's golden inputs, one row each where the model batches (what
online clients send), per request shape asked for. The winner is the configuration with the most
inferences per second at p99 <= target on the first shape; it is written as a ready model
repository, beside a table, a plot and the command that reproduces the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import shlex
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.serve.client import RequestError, ServeClient, golden_requests
from pipeline.serve.repository import export_triton
from pipeline.serve.server import TritonServer
from pipeline.serve.triton_config import TritonModelConfig

#: What the plot, the results and the winner's repository are called in the output directory.
RESULTS_FILE, PLOT_FILE, REPOSITORY_DIR = "results.json", "tune.png", "model_repository"
#: The server's own log, kept beside the results (why a model did not load, or loaded slowly).
SERVER_LOG = "tritonserver.log"


@dataclass(frozen=True)
class Candidate:
    """One serving configuration (``max_batch_size`` 0: the model does not batch)."""

    max_batch_size: int
    queue_delay_us: int
    instances: int
    #: A runtime preset; None: the policy the bundle recorded.
    policy: str | None = None

    @property
    def label(self) -> str:
        """Short, unique name for tables and the plot."""
        batching = (
            f"batch<={self.max_batch_size} delay={self.queue_delay_us}us " if self.max_batch_size else ""
        )
        return f"{batching}x{self.instances} {self.policy or 'recorded'}"

    def apply(self, config: TritonModelConfig) -> TritonModelConfig:
        """``config`` (derived from the bundle) with this candidate's settings."""
        groups = tuple(replace(group, count=self.instances) for group in config.instance_groups)
        config = replace(config, instance_groups=groups, runtime_policy=self.policy)
        if config.max_batch_size == 0:
            return config
        return replace(
            config,
            max_batch_size=self.max_batch_size,
            preferred_batch_sizes=(),
            max_queue_delay_microseconds=self.queue_delay_us,
        )


@dataclass(frozen=True)
class TuneGrid:
    """The values tried per setting; the candidates are every combination."""

    max_batch_sizes: tuple[int, ...] = ()  # empty: a quarter of the bundle's maximum and the maximum
    queue_delays_us: tuple[int, ...] = (0, 1000)
    instances: tuple[int, ...] = (1, 2)
    policies: tuple[str | None, ...] = (None,)

    def candidates(self, bundle_max_batch: int) -> list[Candidate]:
        """Every combination; batch sizes above the bundle's engines' maximum are refused."""
        if bundle_max_batch == 0:
            return [
                Candidate(0, 0, n, policy) for n, policy in itertools.product(self.instances, self.policies)
            ]
        sizes = self.max_batch_sizes or tuple(sorted({max(bundle_max_batch // 4, 1), bundle_max_batch}))
        too_big = [size for size in sizes if not 1 <= size <= bundle_max_batch]
        if too_big:
            raise PipelineError(
                f"--max-batch {too_big}: the bundle's engines take batches of 1..{bundle_max_batch}"
            )
        product = itertools.product(sizes, self.queue_delays_us, self.instances, self.policies)
        return [Candidate(size, delay, n, policy) for size, delay, n, policy in product]


@dataclass(frozen=True)
class TuneSettings:
    """What ``tune`` measures and how long."""

    target_p99_ms: float
    grid: TuneGrid = field(default_factory=TuneGrid)
    #: Golden sets whose shapes requests take (opt, min, max, odd); the winner is chosen on the
    #: first. Empty: opt, and max too where the bundle is dynamic (it has a max set).
    shapes: tuple[str, ...] = ()
    seconds: float = 3.0
    warmup_s: float = 0.5
    max_concurrency: int = 64
    #: Outputs asked for (empty: all of them).
    outputs: tuple[str, ...] = ()
    #: Processes the load generator's callers are spread over (each its own event loop).
    client_processes: int = 1


@dataclass(frozen=True)
class Level:
    """One concurrency level: requests answered in the measured window and their latencies."""

    concurrency: int
    requests: int
    errors: int
    inferences_per_s: float
    p50_ms: float
    p99_ms: float

    def describe(self) -> str:
        """Throughput, p99 and concurrency in words."""
        return (
            f"{self.inferences_per_s:.1f} inf/s at p99 {self.p99_ms:.2f} ms (concurrency {self.concurrency})"
        )


@dataclass
class Measured:
    """The levels measured for one candidate at one request shape."""

    candidate: Candidate
    shape: str
    levels: list[Level] = field(default_factory=list)

    def best(self, target_p99_ms: float) -> Level | None:
        """The level with the most inferences per second at p99 <= target and no errors."""
        meeting = [lvl for lvl in self.levels if lvl.p99_ms <= target_p99_ms and lvl.errors == 0]
        return max(meeting, key=lambda lvl: lvl.inferences_per_s, default=None)


@dataclass
class TuneReport:
    """Everything ``tune`` measured, the batch-1 serial baseline and the winner."""

    bundle: str
    model: str
    settings: TuneSettings
    serial: Level
    results: list[Measured]
    winner: Measured | None
    command: str = ""
    #: False while the run goes on (``results.json`` is rewritten after each configuration, so a
    #: run that is stopped or fails keeps what it measured).
    complete: bool = True

    def ratio(self, level: Level) -> float:
        """``level``'s throughput over batch-1 serial's."""
        return level.inferences_per_s / max(self.serial.inferences_per_s, 1e-9)

    def table(self) -> str:
        """One row per candidate and shape at its best level under the target."""
        target = self.settings.target_p99_ms
        header = ("conc.", "inf/s", "p50 ms", "p99 ms", "x serial")
        rows = [f"{'configuration':<40} {'shape':<6} " + " ".join(f"{h:>8}" for h in header)]
        for result in self.results:
            best = result.best(target)
            if best is None:
                rows.append(
                    f"{result.candidate.label:<40} {result.shape:<6} no level met p99 <= {target:g} ms"
                )
                continue
            values = (best.inferences_per_s, best.p50_ms, best.p99_ms, self.ratio(best))
            numbers = " ".join(f"{value:>8.2f}" for value in values)
            rows.append(f"{result.candidate.label:<40} {result.shape:<6} {best.concurrency:>8} {numbers}")
        serial = self.serial
        rows.append(
            f"batch-1 serial (batch<=1, x1, concurrency 1): {serial.inferences_per_s:.1f} inf/s, "
            f"p99 {serial.p99_ms:.2f} ms"
        )
        best = self.winner.best(target) if self.winner is not None else None
        if self.winner is None or best is None:
            rows.append(f"no configuration met p99 <= {target:g} ms")
        else:
            label = self.winner.candidate.label
            rows.append(f"winner: {label}: {best.describe()}, {self.ratio(best):.2f}x batch-1 serial")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (``results.json``)."""
        return {
            "bundle": self.bundle,
            "model": self.model,
            "settings": asdict(self.settings),
            "serial": asdict(self.serial),
            "results": [asdict(result) for result in self.results],
            "winner": None if self.winner is None else asdict(self.winner.candidate),
            "command": self.command,
            "complete": self.complete,
        }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (p99 ms, inferences/s) points no other point beats on both: lower p99 and more throughput."""
    front: list[tuple[float, float]] = []
    for p99, throughput in sorted(points, key=lambda point: (point[0], -point[1])):
        if not front or throughput > front[-1][1]:
            front.append((p99, throughput))
    return front


def tune(
    bundle: Path, settings: TuneSettings, out: Path, progress: Callable[[str], None] = print
) -> TuneReport:
    """Measure every candidate of ``settings.grid`` on a real tritonserver and write the results,
    the plot and the winner's model repository under ``out`` (which must be new or empty), beside
    the server's log. ``progress`` gets one line per step: the server, each load, each result."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PipelineError(f"{out}: exists and is not an empty directory; pick another --out")
    model, golden, _ = golden_requests(bundle)
    if not settings.shapes:
        settings = replace(settings, shapes=tuple(shape for shape in ("opt", "max") if shape in golden))
    unknown = [shape for shape in settings.shapes if shape not in golden]
    if unknown:
        raise PipelineError(f"--shapes {unknown}: the bundle's golden sets are {sorted(golden)}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pipeline-tune-") as scratch:
        workdir = Path(scratch)
        base = export_triton(bundle, workdir / "models").config
        candidates = settings.grid.candidates(base.max_batch_size)
        requests = {shape: _one_row(golden[shape][0], base.max_batch_size > 0) for shape in settings.shapes}
        with (out / SERVER_LOG).open("w") as log, _client_pool(settings.client_processes) as pool:
            server = TritonServer(workdir / "models", port=0, metrics_port=0, workdir=workdir, log=log)
            server.explicit_models = True
            started = time.monotonic()
            progress(f"starting tritonserver (its log: {out / SERVER_LOG})")
            server.start()
            progress(f"tritonserver ready in {time.monotonic() - started:.1f} s")
            control = ServeClient(server.url, timeout_s=600)
            try:
                measured = _Server(server, control, model, base, settings, pool, progress)
                first = settings.shapes[0]
                serial_candidate = Candidate(1 if base.max_batch_size else 0, 0, 1)
                serial = measured.levels(serial_candidate, requests[first], (1,))[0]
                progress(f"batch-1 serial: {serial.inferences_per_s:.1f} inf/s, p99 {serial.p99_ms:.2f} ms")
                results: list[Measured] = []
                for index, candidate in enumerate(candidates, 1):
                    for shape in settings.shapes:
                        levels = measured.ramp(candidate, requests[shape])
                        results.append(Measured(candidate, shape, levels))
                        best = results[-1].best(settings.target_p99_ms)
                        summary = "no level met the target" if best is None else best.describe()
                        progress(f"[{index}/{len(candidates)}] {candidate.label} {shape}: {summary}")
                        so_far = TuneReport(
                            str(bundle), model, settings, serial, results, None, complete=False
                        )
                        _save(so_far, out)
            finally:
                control.close()  # an open connection would hold the server's exit for its timeout
                server.stop()
    on_first = [r for r in results if r.shape == settings.shapes[0] and r.best(settings.target_p99_ms)]
    winner = max(on_first, key=lambda r: r.best(settings.target_p99_ms).inferences_per_s, default=None)  # type: ignore[union-attr]
    report = TuneReport(
        str(bundle), model, settings, serial, results, winner, command=_command(bundle, settings, out)
    )
    _write(report, bundle, out)
    return report


@contextlib.contextmanager
def _client_pool(processes: int) -> Iterator[Executor | None]:
    """Client processes, started and ready before anything is measured (None: callers run here)."""
    if processes <= 1:
        yield None
        return
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_import_client, range(processes)))
        yield pool


def _import_client(_: int) -> None:
    import tritonclient.http.aio  # noqa: F401  (what each level's callers need, imported once)


def _one_row(inputs: Mapping[str, np.ndarray], batching: bool) -> dict[str, np.ndarray]:
    # Online clients send one item per request; the dynamic batcher stacks them.
    return {name: np.ascontiguousarray(value[:1] if batching else value) for name, value in inputs.items()}


@dataclass
class _Server:
    """The server under test: loads a candidate through the model-control API and measures it."""

    server: TritonServer
    control: ServeClient
    model: str
    base: TritonModelConfig
    settings: TuneSettings
    pool: Executor | None = None
    progress: Callable[[str], None] = print

    def ramp(self, candidate: Candidate, request: Mapping[str, np.ndarray]) -> list[Level]:
        """Levels at concurrency 1, 2, 4, ... up to the first whose p99 passes the target (kept)."""
        top = self.settings.max_concurrency
        return self.levels(candidate, request, [2**k for k in range(top.bit_length())], stop_early=True)

    def levels(
        self,
        candidate: Candidate,
        request: Mapping[str, np.ndarray],
        concurrencies: Sequence[int],
        stop_early: bool = False,
    ) -> list[Level]:
        """``candidate`` loaded, measured at each concurrency, unloaded."""
        self._load(candidate)
        try:
            levels = []
            for concurrency in concurrencies:
                level = _drive(self.server.url, self.model, request, self.settings, concurrency, self.pool)
                levels.append(level)
                if stop_early and (level.p99_ms > self.settings.target_p99_ms or level.errors):
                    break
            return levels
        finally:
            self.control.unload_model(self.model)

    def _load(self, candidate: Candidate) -> None:
        # Each instance loads the bundle and runs its golden check: seconds for a large model.
        started = time.monotonic()
        self.progress(f"loading {candidate.label}")
        try:
            self.control.load_model(self.model, candidate.apply(self.base).to_json())
        except (RequestError, OSError) as exc:
            raise PipelineError(
                f"{candidate.label}: the model did not load: {exc}; {self.server.reason()}"
            ) from None
        self.progress(f"loaded {candidate.label} in {time.monotonic() - started:.1f} s")


@dataclass
class _Samples:
    """What callers saw in the measured window: latencies (s), errors, and when the last answer
    came (``time.monotonic``, one clock for every process of the host)."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    last_answer: float = 0.0


def _drive(
    url: str,
    model: str,
    request: Mapping[str, np.ndarray],
    settings: TuneSettings,
    concurrency: int,
    pool: Executor | None = None,
) -> Level:
    """``concurrency`` callers, each sending its next request when the last is answered; with a
    ``pool``, spread over its client processes (one event loop each), so that the load generator
    is not what limits the throughput."""
    processes = min(settings.client_processes, concurrency) if pool is not None else 1
    # The same window for every process: far enough ahead for the last of them to be sending.
    start = time.monotonic() + (0.2 if processes > 1 else 0.0) + settings.warmup_s
    window = (start, start + settings.seconds)
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    if pool is None or processes == 1:
        parts = [_Callers(url, model, dict(request), settings.outputs, concurrency, window).run()]
    else:
        futures = [
            pool.submit(_Callers(url, model, dict(request), settings.outputs, share, window).run)
            for share in shares
        ]
        parts = [future.result() for future in futures]
    latencies = [latency for part in parts for latency in part.latencies]
    errors = sum(part.errors for part in parts)
    elapsed = max(max(part.last_answer for part in parts) - window[0], 1e-9)
    rows = next(iter(request.values())).shape[0] if request else 1
    values = np.array(latencies or [float("inf")]) * 1e3
    return Level(
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        inferences_per_s=(len(latencies) - errors) * rows / elapsed,
        p50_ms=float(np.percentile(values, 50)),
        p99_ms=float(np.percentile(values, 99)),
    )


@dataclass(frozen=True)
class _Callers:
    """One process's share of the load: ``concurrency`` callers and the measured window."""

    url: str
    model: str
    request: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    concurrency: int
    window: tuple[float, float]

    def run(self) -> _Samples:
        """Send until the window closes (a client process runs this too)."""
        return asyncio.run(self._send())

    async def _send(self) -> _Samples:
        import tritonclient.http as triton_http
        import tritonclient.http.aio as triton_aio
        from tritonclient.utils import np_to_triton_dtype

        tensors = []
        for name, value in self.request.items():
            tensor = triton_http.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value, binary_data=True)
            tensors.append(tensor)
        asked = [triton_http.InferRequestedOutput(name, binary_data=True) for name in self.outputs] or None
        client = triton_aio.InferenceServerClient(self.url.split("://", 1)[-1], conn_limit=self.concurrency)
        # Sent before the window opens: the warm-up (connections, the batcher's first batches).
        samples = _Samples(last_answer=self.window[0])

        async def caller() -> None:
            while (sent := time.monotonic()) < self.window[1]:
                try:
                    await client.infer(self.model, tensors, outputs=asked)
                    failed = False
                except Exception:  # counted; a level with errors never wins
                    failed = True
                answered = time.monotonic()
                if sent >= self.window[0]:
                    samples.latencies.append(answered - sent)
                    samples.errors += failed
                    samples.last_answer = max(samples.last_answer, answered)

        try:
            await asyncio.gather(*(caller() for _ in range(self.concurrency)))
        finally:
            await client.close()
        return samples


def _command(bundle: Path, settings: TuneSettings, out: Path) -> str:
    grid = settings.grid
    words = ["python", "-m", "pipeline.serve", "tune", str(bundle), "--p99-ms", f"{settings.target_p99_ms:g}"]
    if grid.max_batch_sizes:
        words += ["--max-batch", ",".join(map(str, grid.max_batch_sizes))]
    words += ["--queue-delay-us", ",".join(map(str, grid.queue_delays_us))]
    words += ["--instances", ",".join(map(str, grid.instances))]
    words += ["--policies", ",".join(policy or "recorded" for policy in grid.policies)]
    words += ["--shapes", ",".join(settings.shapes), "--seconds", f"{settings.seconds:g}"]
    words += ["--max-concurrency", str(settings.max_concurrency)]
    if settings.outputs:
        words += ["--outputs", ",".join(settings.outputs)]
    if settings.client_processes > 1:
        words += ["--client-processes", str(settings.client_processes)]
    return shlex.join([*words, "--out", str(out)])


def _save(report: TuneReport, out: Path) -> None:
    (out / RESULTS_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


def _write(report: TuneReport, bundle: Path, out: Path) -> None:
    _save(report, out)
    _plot(report, out / PLOT_FILE)
    if report.winner is not None:
        export_triton(bundle, out / REPOSITORY_DIR, adjust=report.winner.candidate.apply)


def _plot(report: TuneReport, path: Path) -> None:
    """Throughput against p99 per configuration (first shape), the Pareto front and the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = report.settings.shapes[0]
    figure, axes = plt.subplots(figsize=(9, 6))
    points: list[tuple[float, float]] = []
    for result in (r for r in report.results if r.shape == first):
        xs = [level.p99_ms for level in result.levels]
        ys = [level.inferences_per_s for level in result.levels]
        points += zip(xs, ys, strict=True)
        axes.plot(xs, ys, marker="o", label=result.candidate.label)
    front = pareto_front(points)
    if front:
        p99s, throughputs = [p for p, _ in front], [t for _, t in front]
        axes.plot(p99s, throughputs, "k*-", markersize=14, linewidth=2.5, alpha=0.45, label="Pareto front")
    axes.axvline(report.settings.target_p99_ms, color="red", linestyle="--", label="p99 target")
    axes.axhline(report.serial.inferences_per_s, color="grey", linestyle=":", label="batch-1 serial")
    axes.set_xlabel("p99 latency (ms)")
    axes.set_ylabel("inferences per second")
    axes.set_title(f"{report.model}: throughput against p99 (shape {first})")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
