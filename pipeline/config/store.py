"""Registers the typed schema in Hydra's ConfigStore.

``conf/config.yaml`` lists ``pipeline_schema`` first in its defaults, so every group file is
merged onto the typed dataclasses and unknown keys or badly typed values fail at composition.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from pipeline.config.schema import PipelineConfig, RefitConfig

SCHEMA_NAME = "pipeline_schema"
REFIT_SCHEMA_NAME = "refit_schema"


def register_configs() -> None:
    """Store the schema nodes (idempotent: ConfigStore replaces an entry of the same name)."""
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=PipelineConfig)
    store.store(name=REFIT_SCHEMA_NAME, node=RefitConfig)
