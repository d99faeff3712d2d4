"""A private local Ray instance per test module (never joins another cluster on the machine)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from raytune_ft.train.launch import WORKER_ENV


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import ray

    env = dict(WORKER_ENV)
    if os.environ.get("RAYTUNE_FT_CACHE"):
        env["RAYTUNE_FT_CACHE"] = os.environ["RAYTUNE_FT_CACHE"]
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": env},
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield
    ray.shutdown()
