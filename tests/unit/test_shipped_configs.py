"""Every YAML shipped under configs/ (found recursively) loads, validates and names real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_ft.config import load_config
from raytune_ft.data import resolve_datasets

CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.y*ml"))


def test_configs_exist() -> None:
    assert any(path.name == "quickstart.yaml" for path in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert resolve_datasets(cfg.data.dataset, cfg.data.dataset_dir)
