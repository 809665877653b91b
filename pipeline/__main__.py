"""``python -m pipeline [overrides]``: Hydra wiring only."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline import cli
from pipeline.config import CONFIG_DIR, register_configs


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Compile, serialize, reload, verify and package the configured model."""
    cli.run(cfg, list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    register_configs()
    cli.precheck(sys.argv[1:])
    main()
