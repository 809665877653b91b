"""What a wheel ships: every package of the source tree, and the config groups inside it."""

from __future__ import annotations

import tomllib

from tests.helpers import REPO


def test_pyproject_lists_every_package_directory_when_wheel_is_built() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_tree = {
        ".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "pipeline").rglob("__init__.py")
    }
    config_groups = {
        ".".join(("pipeline", "conf", *path.relative_to(REPO / "conf").parts))
        for path in (REPO / "conf").rglob("*")
        if path.is_dir()
    }
    assert set(setuptools["packages"]) == in_tree | {"pipeline.conf"} | config_groups
    assert setuptools["package-dir"] == {"pipeline.conf": "conf"}
