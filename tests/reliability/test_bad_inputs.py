"""Bad inputs at a loaded model are refused at the boundary, naming the input (also under -O)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import torch

from pipeline import load_bundle
from pipeline.models import make_inputs
from pipeline.stages.package import PublishedBundle
from tests.helpers import REPO
from tests.reliability.conftest import Tally

pytestmark = pytest.mark.reliability

BAD: dict[str, Callable[[torch.Tensor], tuple[object, ...]]] = {
    "dtype float64": lambda x: (x.double(),),
    "dtype int32": lambda x: (x.int(),),
    "dtype float16": lambda x: (x.half(),),
    "rank 3": lambda x: (x[0],),
    "rank 5": lambda x: (x.unsqueeze(0),),
    "batch 9 > max 8": lambda x: (torch.cat([x] * 5)[:9],),
    "batch 0 < min 1": lambda x: (x[:0],),
    "channels 4": lambda x: (torch.cat([x, x[:, :1]], 1),),
    "height 31": lambda x: (x[:, :, :31],),
    "device meta": lambda x: (x.to("meta"),),
    "no inputs": lambda x: (),
    "two inputs": lambda x: (x, x),
    "not a tensor": lambda x: (x.numpy(),),
    "None": lambda x: (None,),
}


@pytest.mark.parametrize("case", list(BAD))
def test_loaded_model_refuses_bad_input_naming_it_when_called(
    case: str, cnn_bundle: PublishedBundle, tally: Callable[[str], Tally]
) -> None:
    loaded = load_bundle(cnn_bundle.path)
    (images,) = make_inputs(loaded.specs, 0)
    mentions = "images" if case not in ("no inputs", "two inputs") else "expected 1 inputs (images)"
    check = tally("bad inputs at the loaded model (dtype, rank, dims, device, count)")
    check.expect_rejected(lambda: loaded(*BAD[case](images)), mentions=mentions)
    assert check.wrongly_accepted == 0


def test_loaded_model_refuses_bad_input_when_python_runs_with_assertions_off(
    cnn_bundle: PublishedBundle, tally: Callable[[str], Tally]
) -> None:
    code = (
        "import sys, torch\n"
        "from pipeline import load_bundle\n"
        "from pipeline.errors import InputValidationError\n"
        f"m = load_bundle({str(cnn_bundle.path)!r})\n"
        "bad = [torch.rand(2, 3, 32, 32).double(), torch.rand(9, 3, 32, 32), torch.rand(3, 32, 32)]\n"
        "refused = 0\n"
        "for x in bad:\n"
        "    try:\n        m(x)\n    except InputValidationError:\n        refused += 1\n"
        "print(refused, len(bad))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    refused, total = map(int, completed.stdout.split())
    check = tally("bad inputs under python -O")
    for index in range(total):
        check.count(rejected=index < refused)
    assert refused == total
