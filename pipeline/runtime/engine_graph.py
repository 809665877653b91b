"""A compiled graph split into its TensorRT engines (raw bytes) and the graph that calls them.

Torch-TensorRT serializes an engine by base64-encoding it inside the pickled module (4/3 of the
engine's size, slow) and deep-copies the module on the way. A bundle instead keeps:

* each engine as raw bytes, with the other fields of its serialized form recorded as data
  (:class:`EngineRecord`), and
* the calling graph as a pickled ``torch.fx.GraphModule`` where every engine module is replaced by
  an :class:`EngineSlot`: a stand-in holding only the engine's name.

Loading reverses it: each engine is rebuilt from its bytes and each slot's call is rewritten into
a direct ``execute_engine(inputs, engine)`` call on a root attribute, the layout
:func:`pipeline.runtime.engines.find_engines` expects. Nothing here imports ``torch_tensorrt``:
the engine's description and the engine operator are passed in, so the logic runs on CPU tests.
"""

from __future__ import annotations

import copy
import io
import operator
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule
from torch.fx.graph import CodeGen

from pipeline.errors import BundleError

ENGINE_DIR = "engines"
ENGINE_SUFFIX = ".engine"


class EngineSlot(nn.Module):
    """Where an engine module stood in the graph; never called (replaced when engines attach).

    It is pickled with the graph, so it holds plain data only. Its class path is part of the
    bundle format: keep it here.
    """

    def __init__(self, attribute: str, outputs: int) -> None:
        super().__init__()
        self.attribute = attribute
        self.outputs = outputs

    def forward(self, *inputs: torch.Tensor) -> Any:
        raise RuntimeError(f"engine {self.attribute!r} was not attached: load the bundle with load_bundle")


@dataclass
class EngineDescription:
    """What an engine module is made of: its serialized fields, raw engine bytes among them."""

    serialized_info: list[str | bytes]
    engine_index: int
    outputs: int

    @property
    def engine_bytes(self) -> bytes:
        """The serialized TensorRT engine itself."""
        value = self.serialized_info[self.engine_index]
        return value if isinstance(value, bytes) else value.encode("latin-1")

    def fields_without_engine(self) -> list[str]:
        """Every serialized field as text, the engine's own place left empty."""
        return ["" if i == self.engine_index else str(v) for i, v in enumerate(self.serialized_info)]


@dataclass
class EngineRecord:
    """One engine of a bundle, as the manifest lists it.

    ``serialized_info`` is the engine's serialized form as the runtime's ``Engine`` constructor
    takes it (ABI version, name, device, binding names, hardware-compatible flag, metadata,
    platform, resource-allocation strategy, ...), with the engine bytes left out: they are the
    file ``file``, put back at ``engine_index`` on load.
    """

    attribute: str
    file: str
    engine_index: int
    outputs: int
    serialized_info: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineRecord:
        """Parse a manifest entry; anything malformed raises :class:`BundleError`."""
        try:
            record = cls(**data)
        except TypeError as exc:
            raise BundleError(f"manifest.json: malformed engine entry ({exc})") from None
        if not (
            isinstance(record.attribute, str)
            and record.attribute.isidentifier()
            and isinstance(record.file, str)
            and isinstance(record.engine_index, int)
            and isinstance(record.outputs, int)
            and record.outputs >= 1
            and isinstance(record.serialized_info, list)
            and all(isinstance(v, str) for v in record.serialized_info)
            and 0 <= record.engine_index < len(record.serialized_info)
        ):
            raise BundleError(f"manifest.json: malformed engine entry {data.get('attribute')!r}")
        return record

    def constructor_args(self, engine_bytes: bytes) -> list[str | bytes]:
        """The list the runtime's ``Engine`` constructor takes, engine bytes in their place."""
        info: list[str | bytes] = list(self.serialized_info)
        info[self.engine_index] = engine_bytes
        return info


@dataclass
class SplitGraph:
    """A compiled module taken apart: the pickled calling graph, and each engine's bytes."""

    graph_bytes: bytes
    engines: list[tuple[EngineRecord, bytes]]


def split_engines(module: nn.Module, describe: Callable[[nn.Module], EngineDescription | None]) -> SplitGraph:
    """Take the engines out of ``module`` (an fx ``GraphModule`` from a compiler).

    ``describe`` returns the description of an engine module, or None for any other submodule
    (PyTorch fallback subgraphs stay in the graph with their weights). Engines are read once, by
    reference: no deep copy, no re-serialization of the engine.
    """
    if not isinstance(module, GraphModule):
        raise TypeError(f"expected a torch.fx.GraphModule, got {type(module).__name__}")
    graph = copy.deepcopy(module.graph)  # nodes only; node metadata is copied shallowly
    shell = GraphModule(module, graph)  # references the submodules; copies nothing heavy
    engines: list[tuple[EngineRecord, bytes]] = []
    targets: dict[str, str] = {}  # engine attribute -> the submodule it came from
    for node in graph.nodes:
        if node.op != "call_module" or node.target in targets.values():
            continue  # an engine called twice keeps one slot, which every call site uses
        description = describe(module.get_submodule(node.target))
        if description is None:
            continue
        attribute = f"{node.target.replace('.', '_')}_engine"
        if attribute in targets:
            raise ValueError(
                f"engine modules {targets[attribute]!r} and {node.target!r} would share the name "
                f"{attribute!r} in the bundle"
            )
        targets[attribute] = node.target
        record = EngineRecord(
            attribute=attribute,
            file=f"{ENGINE_DIR}/{node.target.replace('.', '_')}{ENGINE_SUFFIX}",
            engine_index=description.engine_index,
            outputs=description.outputs,
            serialized_info=description.fields_without_engine(),
        )
        _replace_submodule(shell, node.target, EngineSlot(attribute, description.outputs))
        engines.append((record, description.engine_bytes))
    # Bundles run a flat forward(*tensors): no pytree wrapping of inputs and outputs per call.
    shell.graph._codegen = CodeGen()
    shell.recompile()
    buffer = io.BytesIO()
    torch.save(shell, buffer)
    return SplitGraph(graph_bytes=buffer.getvalue(), engines=engines)


def load_graph(graph_bytes: bytes, device: torch.device) -> GraphModule:
    """Unpickle a graph written by :func:`split_engines` (callers verified its sha256 first)."""
    module = torch.load(io.BytesIO(graph_bytes), map_location=device, weights_only=False)
    if not isinstance(module, GraphModule):
        raise BundleError(f"graph file holds a {type(module).__name__}, expected a GraphModule")
    return module


def engine_slots(module: GraphModule) -> dict[str, EngineSlot]:
    """The slots of ``module``, by engine attribute name."""
    return {m.attribute: m for m in module.modules() if isinstance(m, EngineSlot)}


def attach_engines(module: GraphModule, engines: Mapping[str, object], execute: Callable[..., Any]) -> None:
    """Put ``engines`` (attribute name -> engine object) back where their slots stand.

    Each slot's call becomes ``execute([inputs], self.<attribute>)`` (and ``[0]`` for a
    single-output engine, as the engine module returned it), so a call runs the engine operator
    directly, with no module call in between.
    """
    slots = engine_slots(module)
    if set(slots) != set(engines):
        raise BundleError(f"the graph calls engines {sorted(slots)} but the manifest lists {sorted(engines)}")
    graph = module.graph
    replaced: set[str] = set()
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        slot = module.get_submodule(node.target)
        if not isinstance(slot, EngineSlot):
            continue
        setattr(module, slot.attribute, engines[slot.attribute])
        with graph.inserting_before(node), warnings.catch_warnings():
            # fx warns for get_attr of anything but modules, parameters and buffers; engines are
            # script objects, held as plain attributes exactly as torch.export unlifts them.
            warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
            engine = graph.get_attr(slot.attribute)
            call = graph.call_function(execute, (list(node.args), engine))
            result = graph.call_function(operator.getitem, (call, 0)) if slot.outputs == 1 else call
        node.replace_all_uses_with(result)
        graph.erase_node(node)
        replaced.add(node.target)
    for target in replaced:  # after every call site: one slot may serve several
        _delete_submodule(module, target)
    graph.lint()
    module.recompile()


def escaping_engines(module: GraphModule, execute: Callable[..., Any]) -> set[str]:
    """The engines (by attribute) whose outputs can leave a call of ``module``.

    An engine's output escapes when a path of graph nodes leads from its call to the graph's
    output without passing through another engine call (an engine writes into tensors it
    allocates; any other node, a view or ``getitem`` above all, may alias its input).
    """
    escaping: set[str] = set()
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target is not execute:
            continue
        pending, seen = list(node.users), set()
        while pending:
            user = pending.pop()
            if user in seen or (user.op == "call_function" and user.target is execute):
                continue
            seen.add(user)
            if user.op == "output":
                escaping.add(str(node.args[1].target))
                break
            pending.extend(user.users)
    return escaping


def _replace_submodule(module: nn.Module, target: str, replacement: nn.Module) -> None:
    parent_path, _, name = target.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, name, replacement)


def _delete_submodule(module: nn.Module, target: str) -> None:
    parent_path, _, name = target.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    delattr(parent, name)
