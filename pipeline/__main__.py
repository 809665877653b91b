"""``python -m pipeline [overrides]``: Hydra wiring only."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import hydra
except ModuleNotFoundError as missing:  # a deployment install: pipeline.runtime only
    print(
        f"error: python -m pipeline builds bundles and needs the build extra ({missing.name} is not "
        "installed): pip install 'trt-pipeline[build]'",
        file=sys.stderr,
    )
    sys.exit(2)
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline import cli
from pipeline.config import CONFIG_DIR, register_configs
from pipeline.signals import clean_stop


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    """Compile, serialize, reload, verify and package the configured model."""
    hydra_config = HydraConfig.get()
    multirun = hydra_config.mode == RunMode.MULTIRUN
    # A --config-dir (the user's own YAML) is part of what built the bundle: record it with the
    # overrides, so that the report's rebuild command finds the model again.
    config_dirs = [
        f"--config-dir={source.path}"
        for source in hydra_config.runtime.config_sources
        if source.provider == "command-line" and source.schema == "file"
    ]
    job = cli.JobContext(
        overrides=[*config_dirs, *hydra_config.overrides.task],
        output_dir=Path(hydra_config.runtime.output_dir),
        original_cwd=Path(hydra_config.runtime.cwd),
        job=str(hydra_config.job.num) if multirun else "0",  # job.num is unset outside sweeps
        multirun=multirun,
    )
    cli.run(cfg, job)


if __name__ == "__main__":
    register_configs()
    cli.precheck(sys.argv[1:])
    with clean_stop("nothing published"):
        main()
