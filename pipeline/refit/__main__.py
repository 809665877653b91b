"""``python -m pipeline.refit bundle=PATH weights=SOURCE``: Hydra wiring only."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from pipeline import cli as pipeline_cli
from pipeline.config import CONFIG_DIR, register_configs, resolve_refit
from pipeline.config.loading import REFIT_CONFIG_NAME
from pipeline.refit import cli
from pipeline.signals import clean_stop


@hydra.main(config_path=str(CONFIG_DIR), config_name=REFIT_CONFIG_NAME, version_base=None)
def main(cfg: DictConfig) -> None:
    """Refit a bundle's engines with new weights and publish the verified result."""
    cli.run(cfg)


if __name__ == "__main__":
    register_configs()
    pipeline_cli.precheck(sys.argv[1:], REFIT_CONFIG_NAME, resolve_refit, cli.USAGE)
    with clean_stop("nothing published"):
        main()
