"""Run planning on the driver: how many steps an epoch budget means, CPUs per worker, and the CPUs each
worker computes on."""

from __future__ import annotations

import os

import pytest

from raytune_ft.config import ConfigError, JobConfig, load_config
from raytune_ft.train import compute_cpus, plan_total_steps, worker_cpus


@pytest.mark.parametrize(
    ("rows", "workers", "batch", "accum", "epochs", "steps"),
    [
        (103, 2, 8, 1, 3, 21),  # the quickstart: 51 rows per worker -> 7 micro-batches per epoch
        (100, 1, 10, 1, 1, 10),
        (100, 1, 10, 2, 1, 5),
        (100, 1, 10, 3, 1, 4),  # a partial accumulation window still makes a step
        (10, 4, 8, 1, 0.5, 1),
    ],
)
def test_plan_total_steps(rows: int, workers: int, batch: int, accum: int, epochs: float, steps: int) -> None:
    cfg = load_config(None, [f"scaling.num_workers={workers}", f"train.per_device_batch_size={batch}",
                             f"train.gradient_accumulation_steps={accum}", f"train.num_epochs={epochs}"])  # fmt: skip
    assert plan_total_steps(cfg, rows) == steps


def test_too_few_rows_for_the_workers() -> None:
    with pytest.raises(ConfigError, match=r"too few for scaling\.num_workers=4"):
        plan_total_steps(load_config(None, ["scaling.num_workers=4"]), 3)


@pytest.mark.parametrize(
    ("cluster", "workers", "configured", "expected"),
    [(2, 2, None, 0.5), (2, 1, None, 1.0), (16, 4, None, 1.0), (3, 4, None, 0.5), (2, 2, 2.0, 2.0)],
)
def test_worker_cpus(cluster: float, workers: int, configured: float | None, expected: float) -> None:
    extra = [] if configured is None else [f"scaling.cpus_per_worker={configured}"]
    cfg = load_config(None, [f"scaling.num_workers={workers}", *extra])
    assert worker_cpus(cfg, cluster) == expected


@pytest.mark.parametrize(
    ("workers", "free", "extra", "one_node", "expected"),
    [
        (1, 2.0, [], True, 2.0),  # a lone worker computes on the whole node, not the 1 CPU it reserves
        (2, 2.0, [], True, 1.0),
        (3, 2.0, [], True, 2 / 3),
        (1, 2.0, ["scaling.cpus_per_worker=0.5"], True, 0.5),  # what the user reserved
        (1, 2.0, ["scaling.use_gpu=true"], True, 1.0),
        (1, 64.0, [], False, 1.0),  # on a cluster, other runs' workers may share the node
    ],
)
def test_compute_cpus(workers: int, free: float, extra: list[str], one_node: bool, expected: float) -> None:
    cfg = load_config(None, [f"scaling.num_workers={workers}", *extra])
    cpus = worker_cpus(cfg, free) if not cfg.scaling.use_gpu else 1.0
    assert compute_cpus(cfg, cpus, free, one_node=one_node) == pytest.approx(max(cpus, expected))


def test_compute_cpus_keep_to_the_cores_the_process_may_use() -> None:
    cfg = load_config(None, [])
    cores = len(os.sched_getaffinity(0))
    assert compute_cpus(cfg, 1.0, 4.0 * cores, one_node=True) == cores


def online(method: dict[str, object]) -> JobConfig:
    return JobConfig.model_validate({"method": method, "rollout": {"prompts_per_step": 8}, "train": {"num_epochs": 1}})


def test_online_stages_step_per_generated_batch() -> None:
    """A generated batch of rollout.prompts_per_step prompts makes ppo_epochs x ppo_buffer_size steps."""
    assert plan_total_steps(online({"stage": "grpo", "ppo_epochs": 2}), 100) == 12 * 2
    assert plan_total_steps(online({"stage": "ppo", "ppo_buffer_size": 2}), 100) == 12 * 4 * 2  # ppo_epochs 4 unset


def test_separate_engines_and_reward_models_reserve_their_cpus() -> None:
    from raytune_ft.rl.launch import worker_setup

    apart = {"placement": "separate", "num_engines": 2, "cpus_per_engine": 1.5}
    grpo = JobConfig.model_validate({"method": {"stage": "grpo", "reward": ["format", "rm:/r"]}, "rollout": apart})
    assert worker_setup(grpo).reserved_cpus(grpo) == 3 * 1.5  # two engines and one reward model
    colocated = grpo.model_copy(update={"rollout": grpo.rollout.model_copy(update={"placement": "colocated"})})
    assert worker_setup(colocated).reserved_cpus(colocated) == 0
    sft = JobConfig.model_validate({"rollout": apart})
    assert worker_setup(sft).reserved_cpus(sft) == 0  # an offline stage starts no engine


def test_workers_and_engines_must_leave_ray_data_a_task() -> None:
    """One worker and one separate engine of 1 CPU each on 2 CPUs left Ray Data nothing: the run waited forever."""
    from raytune_ft.train import check_data_cpus

    steps = {"max_steps": 4}  # the rows are streamed while the workers train
    cfg = JobConfig.model_validate({"method": {"stage": "grpo"}, "rollout": {"placement": "separate"}, "train": steps})
    cpus = worker_cpus(cfg, 2 - 1.0)  # the default shrinks to what the engine leaves
    assert cpus == pytest.approx(0.1)
    check_data_cpus(cfg, 2, 1.0, cpus, one_node=True)
    with pytest.raises(ConfigError, match=r"leave 0 of the cluster's 2 CPUs.*rollout\.cpus_per_engine \(now 1;"):
        check_data_cpus(cfg, 2, 1.0, 1.0, one_node=True)
    pinned = JobConfig.model_validate({"scaling": {"num_workers": 2, "cpus_per_worker": 1.0}, "train": steps})
    with pytest.raises(ConfigError, match=r"2 training worker\(s\) x 1 CPU leave 0 .* lower scaling\.cpus_per_worker,"):
        check_data_cpus(pinned, 2, 0.0, 1.0, one_node=True)
    check_data_cpus(pinned, 2, 0.0, 1.0, one_node=False)  # more nodes may come: a warning only
    epochs = pinned.model_copy(update={"train": pinned.train.model_copy(update={"max_steps": None})})
    check_data_cpus(epochs, 2, 0.0, 1.0, one_node=True)  # rows materialized before training need no CPU then
