"""Built-in calibration data sources (``calibration.source._target_``).

A source is a callable taking a :class:`CalibrationRequest` as ``request`` (plus its config
node's own keyword arguments) and returning an iterable of input tuples, one tensor per declared
input in declared order, on ``request.device`` in the precision's activation dtype. It is
called on the build side only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config.schema import InputSpec, ModelConfig, Precision
from pipeline.errors import ConfigError
from pipeline.models.inputs import make_inputs
from pipeline.runtime.types import dim_names, torch_dtype

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class CalibrationRequest:
    """What a calibration source is asked for: ``samples`` rows in batches of ``batch_size``
    rows, for the inputs ``specs`` of ``model``, seeded by ``seed``."""

    model: ModelConfig
    specs: Sequence[InputSpec]
    samples: int
    batch_size: int
    seed: int
    precision: Precision
    device: torch.device

    @property
    def batches(self) -> int:
        """How many batches cover ``samples`` rows."""
        return max(1, math.ceil(self.samples / self.batch_size))

    def batch_sizes(self) -> dict[str, int]:
        """The size of each input's named first dimension at ``batch_size`` (empty when static)."""
        sizes = {}
        for spec in self.specs:
            names = dim_names(spec)
            if names and names[0] is not None:
                sizes[names[0]] = self.batch_size
        return sizes


def calibration_batch_size(specs: Sequence[InputSpec], requested: int | None) -> int:
    """The rows per calibration batch: ``requested`` when the first dimension is dynamic and
    admits it, the declared first dimension otherwise (a different request is refused)."""
    first = specs[0]
    declared = first.shape[0] if first.shape else 1
    if requested is None or requested == declared:
        return declared
    low = (first.min_shape or first.shape)[0]
    high = (first.max_shape or first.shape)[0]
    if not low <= requested <= high:
        raise ConfigError(
            f"calibration.batch_size={requested}: model.inputs[{first.name}] takes a first dimension "
            f"of {low}..{high}; use null (its shape's {declared}) or a size in that range"
        )
    return requested


def random_inputs(request: CalibrationRequest) -> Iterator[tuple[torch.Tensor, ...]]:
    """Seeded random batches drawn from the input specs' value ranges (tests and smoke runs:
    random data does not give the scales real data gives)."""
    sizes = request.batch_sizes()
    for index in range(request.batches):
        yield make_inputs(request.specs, request.seed + index, request.precision, request.device, sizes)


def _required_path(path: str | None) -> str:
    if not path:
        raise ConfigError("calibration.source.path: required by this source; set calibration.source.path=...")
    return path


def _only_input(request: CalibrationRequest, kind: str) -> InputSpec:
    floating = [s for s in request.specs if torch_dtype(s.dtype).is_floating_point]
    if len(request.specs) != 1 or not floating:
        raise ConfigError(
            f"calibration.source {kind}: the model must take one floating input (it declares "
            f"{', '.join(s.name for s in request.specs)})"
        )
    return floating[0]


def image_folder(
    request: CalibrationRequest,
    path: str | None = None,
    size: int = 224,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Images from ``path`` (sorted, the first ``samples``), resized (shorter side) and center
    cropped to ``size``, normalized with ``mean``/``std``, batched as the input expects."""
    from PIL import Image
    from torchvision.transforms import functional as F

    spec = _only_input(request, "image_folder")
    folder = Path(_required_path(path))
    files = (
        sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    )
    if not files:
        raise ConfigError(f"calibration.source.path={path}: no images ({', '.join(IMAGE_SUFFIXES)}) there")
    dtype = torch_dtype(spec.dtype, request.precision)
    files = files[: request.samples]
    for start in range(0, len(files), request.batch_size):
        chunk = files[start : start + request.batch_size]
        images = []
        for file in chunk:
            with Image.open(file) as image:
                tensor = F.pil_to_tensor(image.convert("RGB"))
            tensor = F.center_crop(F.resize(tensor, [size], antialias=True), [size, size])
            images.append(F.normalize(tensor.float() / 255.0, list(mean), list(std)))
        while len(images) < request.batch_size:  # a static batch dimension takes full batches only
            images.append(images[len(images) % len(chunk)])
        yield (torch.stack(images).to(request.device, dtype),)


def text_lines(
    request: CalibrationRequest, path: str | None = None, tokenizer: str | None = None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Lines of the text file ``path`` (blank ones skipped, the first ``samples``), tokenized
    with ``tokenizer`` (a hub id or directory; default ``model.weights.name_or_path``) to the
    sequence length the inputs declare. Inputs are matched by name: ``input_ids``,
    ``attention_mask``, ``token_type_ids``."""
    from transformers import AutoTokenizer

    name = tokenizer or request.model.weights.name_or_path
    if not name:
        raise ConfigError(
            "calibration.source.tokenizer: none given and model.weights.name_or_path is unset; "
            "name a tokenizer (hub id or directory)"
        )
    file = Path(_required_path(path))
    if not file.is_file():
        raise ConfigError(f"calibration.source.path={path}: no such file")
    lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"calibration.source.path={path}: no non-blank lines")
    lines = lines[: request.samples]
    known = {"input_ids", "attention_mask", "token_type_ids"}
    unknown = [s.name for s in request.specs if s.name not in known]
    if unknown:
        raise ConfigError(f"calibration.source text_lines: cannot fill inputs {unknown} from text")
    length = request.specs[0].shape[-1]
    tokenize = AutoTokenizer.from_pretrained(name)
    for start in range(0, len(lines), request.batch_size):
        chunk = lines[start : start + request.batch_size]
        chunk = chunk + [chunk[i % len(chunk)] for i in range(request.batch_size - len(chunk))]
        encoded = tokenize(
            chunk, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )
        yield tuple(
            encoded[s.name].to(request.device, torch_dtype(s.dtype, request.precision)) for s in request.specs
        )


def take(batches: Iterable[tuple[torch.Tensor, ...]], limit: int) -> list[tuple[torch.Tensor, ...]]:
    """At most ``limit`` batches of ``batches``."""
    taken: list[tuple[torch.Tensor, ...]] = []
    for batch in batches:
        if len(taken) >= limit:
            break
        taken.append(tuple(batch))
    return taken
