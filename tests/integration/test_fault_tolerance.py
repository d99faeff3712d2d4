"""Training survives a lost worker and a lost node: a Ray cluster of a head and two worker nodes on
this machine (``ray.cluster_utils.Cluster``), training spread across them, checkpoints in a shared
directory. After each fault Ray Train restarts the workers (``scaling.max_failures``) from the last
checkpoint, and the steps trained again reproduce the steps lost: same weights, optimizer, schedule,
random state and data position, so the same losses to float precision."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raytune_ft.config import load_config
from raytune_ft.models import checkpoint_step, latest_checkpoint
from raytune_ft.train import run_training
from raytune_ft.train.faults import FaultDrill, logged_steps, training_workers, wait_for_step
from raytune_ft.train.launch import WORKER_ENV

pytestmark = pytest.mark.integration

STEPS, SAVE_EVERY = 10, 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head (1 CPU, for the driver and Ray Data) and three 1-CPU worker nodes, one spare to stand in
    for the node an autoscaler would bring (a node added from the fault thread never came up here);
    stopped by its own handle."""
    import ray
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True})
    for _ in range(3):
        nodes.add_node(num_cpus=1)
    env = {**WORKER_ENV, "PYTHONPATH": str(Path(__file__).parents[2])}
    if os.environ.get("RAYTUNE_FT_CACHE"):
        env["RAYTUNE_FT_CACHE"] = os.environ["RAYTUNE_FT_CACHE"]
    ray.init(address=nodes.address, runtime_env={"env_vars": env})
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def config(model_dir: Path, tmp_path: Path, name: str) -> Any:
    return load_config(None, [
        f"model.source={model_dir}", "data.dataset=identity", "data.cutoff_len=128", "scaling.num_workers=2",
        "scaling.placement_strategy=SPREAD", "scaling.max_failures=2", "train.per_device_batch_size=4",
        "train.learning_rate=1e-2", "adapter.rank=16", "adapter.dropout=0.1", "train.logging_steps=1",
        f"train.max_steps={STEPS}", f"train.save_steps={SAVE_EVERY}", f"train.storage_path={tmp_path}",
        f"train.run_name={name}",
    ])  # fmt: skip


def assert_resumed_exactly(run_dir: str, before: list[dict[str, float]]) -> None:
    """The run finished every step once, and the steps redone after the fault match the lost ones."""
    after = logged_steps(run_dir)
    assert [r["step"] for r in after] == list(range(1, STEPS + 1))
    redone = [r for r in before if r["step"] > SAVE_EVERY]
    assert redone, "the fault came before any step past the checkpoint was logged"
    for lost in redone:  # the dropout mask, the rows and the optimizer state all have to agree
        again = after[int(lost["step"]) - 1]
        assert again["loss"] == pytest.approx(lost["loss"], rel=1e-6), (lost, again)
        assert again["time"] > lost["time"]
    assert checkpoint_step(latest_checkpoint(run_dir)) == STEPS


def test_killed_worker_resumes_from_checkpoint(cluster: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = config(tiny_model_dir, tmp_path, "kill")
    drill = FaultDrill(tmp_path / "kill", at_steps=[SAVE_EVERY + 2])
    drill.start()
    outcome = run_training(cfg)
    assert drill.error is None, drill.error
    (kill,) = drill.kills
    assert len({w.node_id for w in kill.workers}) == 2, "SPREAD places the two workers on two nodes"
    assert_resumed_exactly(outcome.run_dir, kill.logged)


def test_removed_node_resumes_on_the_spare(cluster: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = config(tiny_model_dir, tmp_path, "node")
    head = cluster.head_node.node_id
    removed: dict[str, Any] = {}

    def remove_a_training_node() -> None:
        try:
            wait_for_step(tmp_path / "node", SAVE_EVERY + 2, timeout=600)
            removed["logged"] = logged_steps(tmp_path / "node")
            victim = next(w.node_id for w in training_workers() if w.node_id != head)
            node = next(n for n in cluster.worker_nodes if n.node_id == victim)
            cluster.remove_node(node, allow_graceful=False)  # as a host that vanishes
            removed["node"] = victim
        except BaseException as err:  # failed below, in the test's thread
            removed["error"] = err

    thread = threading.Thread(target=remove_a_training_node, daemon=True)
    thread.start()
    outcome = run_training(cfg)
    thread.join(timeout=60)
    assert "error" not in removed, removed.get("error")
    assert removed["node"] not in {n.node_id for n in cluster.worker_nodes}
    assert_resumed_exactly(outcome.run_dir, removed["logged"])
