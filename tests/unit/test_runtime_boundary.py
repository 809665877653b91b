"""The deployment runtime stands alone: ``pipeline.runtime`` imports nothing of the build side.

Deployment hosts install only what loading needs (no Hydra, omegaconf, matplotlib, transformers,
torchvision); the build side imports the runtime, never the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.stages.package import PublishedBundle
from tests.helpers import REPO, python_snippet

RUNTIME_DIR = REPO / "pipeline" / "runtime"
#: What runtime code may import from this project, besides pipeline.runtime itself.
SHARED_LEAVES = {"pipeline", "pipeline.errors", "pipeline.timing"}
#: Top-level packages a deployment install does not have or must not load.
BUILD_SIDE = ("hydra", "omegaconf", "matplotlib", "transformers", "torchvision", "rich", "torch_tensorrt")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def allowed(module: str) -> bool:
    if module.split(".")[0] in BUILD_SIDE:
        return False
    if module == "pipeline" or module.startswith("pipeline."):
        return (
            module in SHARED_LEAVES or module == "pipeline.runtime" or module.startswith("pipeline.runtime.")
        )
    return True


def test_runtime_modules_import_nothing_of_the_build_side_when_read() -> None:
    offending = {
        f"{path.name}: {module}"
        for path in sorted(RUNTIME_DIR.glob("*.py"))
        for module in imported_modules(path)
        if not allowed(module)
    }
    assert offending == set()


def test_loading_and_calling_a_bundle_loads_no_build_side_module_when_run_in_fresh_process(
    cnn_bundle: PublishedBundle,
) -> None:
    probe = (
        "import sys, torch\n"
        "from pipeline.runtime import load_bundle, verify_loaded\n"
        f"with load_bundle({str(cnn_bundle.path)!r}, runtime='preallocated') as model:\n"
        "    model(torch.rand(2, 3, 32, 32))\n"
        "    assert verify_loaded(model).passed\n"
        "    model.set_runtime('standard')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pipeline'))\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {BUILD_SIDE!r}))\n"
    )
    completed = python_snippet(probe)
    assert completed.returncode == 0, completed.stderr[-2000:]
    project, build_side = completed.stdout.strip().splitlines()[-2:]
    assert build_side == "[]"
    assert all(allowed(module) for module in ast.literal_eval(project)), project
