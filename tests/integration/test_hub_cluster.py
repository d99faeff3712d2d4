"""A Hugging Face Hub id trains offline on a Ray cluster whose nodes each have their own cache
(``ray.cluster_utils.Cluster``, HF_HUB_CACHE set per node): the driver pins ``main`` to its commit once, and
every worker loads that commit from its own node's cache.

The caches are built so that anything else fails: in the node caches ``main`` has moved on to a commit that
does not load (a worker resolving ``main`` by itself would fail), and the driver's cache holds the pinned
commit's tokenizer and config but no weights (a worker reading the driver's cache would fail). When ``main``
moves in the driver's cache too, the run started again resumes on the commit its checkpoints were trained on.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_cache import hf_cache_entry, hf_storage

from raytune_ft.config import load_config
from raytune_ft.models import CONFIG_FILE, checkpoint_step, latest_checkpoint
from raytune_ft.train import run_training
from raytune_ft.train.launch import WORKER_ENV

pytestmark = pytest.mark.integration

REPO = "tiny-org/tiny-llama"
PINNED, MOVED = "1" * 40, "2" * 40
NODES = ("head", "a", "b")


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "not-a-model"}')
    found = {"driver": root / "driver"}
    hf_cache_entry(found["driver"], REPO, tiny_model_dir, commit=PINNED, exclude=("model.safetensors",))
    for node in NODES:
        found[node] = root / node
        hf_cache_entry(found[node], REPO, tiny_model_dir, commit=PINNED, refs=())
        hf_cache_entry(found[node], REPO, broken, commit=MOVED, refs=("main",))
    return found


@pytest.fixture(scope="module")
def cluster(caches: dict[str, Path]) -> Iterator[Any]:
    """A head and two worker nodes, one CPU each, every node with its own HF_HUB_CACHE."""
    import ray
    from ray.cluster_utils import Cluster

    def node_env(node: str) -> dict[str, str]:
        return {"HF_HUB_CACHE": str(caches[node])}

    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "env_vars": node_env("head")}
    )
    for node in NODES[1:]:
        nodes.add_node(num_cpus=1, env_vars=node_env(node))
    ray.init(
        address=nodes.address, runtime_env={"env_vars": {**WORKER_ENV, "PYTHONPATH": str(Path(__file__).parents[2])}}
    )
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def test_every_node_loads_the_pinned_commit_from_its_own_cache(
    cluster: Any, caches: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.util.state import list_actors

    monkeypatch.setenv("HF_HUB_CACHE", str(caches["driver"]))  # the driver process's own cache
    args = [
        f"model.source={REPO}", "data.dataset=identity", "data.cutoff_len=64", "scaling.num_workers=2",
        "scaling.placement_strategy=SPREAD", "train.per_device_batch_size=2", "train.save_steps=3",
        "train.logging_steps=1", f"train.storage_path={tmp_path}", "train.run_name=hub",
    ]  # fmt: skip
    outcome = run_training(load_config(None, [*args, "train.max_steps=3"]))

    checkpoint = latest_checkpoint(outcome.run_dir)
    assert checkpoint_step(checkpoint) == 3
    assert load_config(checkpoint / CONFIG_FILE).model.source == f"{REPO}@{PINNED}"
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], raise_on_missing_output=False)
    assert len({w.node_id for w in workers}) == 2, "the two workers ran on two nodes, each with its own cache"

    (hf_storage(caches["driver"], REPO) / "refs" / "main").write_text(MOVED)  # main moves on before the restart
    outcome = run_training(load_config(None, [*args, "train.max_steps=4"]))
    checkpoint = latest_checkpoint(outcome.run_dir)
    assert checkpoint_step(checkpoint) == 4, "the run resumed instead of being refused as another model"
    assert load_config(checkpoint / CONFIG_FILE).model.source == f"{REPO}@{PINNED}"
    shutil.rmtree(tmp_path / "hub", ignore_errors=True)
