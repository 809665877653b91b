"""What the host is: recorded in every manifest next to the backend's own versions."""

from __future__ import annotations

import importlib.metadata
import platform

import torch


def package_version(package: str) -> str:
    """The installed version of ``package``, or ``absent``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def host_environment() -> dict[str, str]:
    """Python, library versions, CUDA and GPU of this host."""
    environment = {
        "python": platform.python_version(),
        "os": f"{platform.system()}-{platform.machine()}",
        "torch": torch.__version__,
        "torchvision": package_version("torchvision"),
        "transformers": package_version("transformers"),
        "cuda": str(torch.version.cuda),
    }
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        environment["gpu"] = torch.cuda.get_device_name()
        environment["sm"] = f"{major}.{minor}"
    return environment
