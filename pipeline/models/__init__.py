"""Model factories, input generation and the adapter that gives every model one calling form."""

from pipeline.models.adapter import PositionalAdapter, flatten_outputs
from pipeline.models.inputs import make_inputs, torch_dtype
from pipeline.models.weights import state_dict_digest

__all__ = ["PositionalAdapter", "flatten_outputs", "make_inputs", "state_dict_digest", "torch_dtype"]
