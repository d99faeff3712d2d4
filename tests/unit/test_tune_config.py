"""The ``tune:`` section: the search space is checked against the config at load time, and it maps
onto Ray Tune's domains, schedulers and resources; the results files are what ``raytune-ft train``
and a spreadsheet read back."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from raytune_ft.config import ConfigError, JobConfig, load_config
from raytune_ft.tune import (
    SCHEDULERS,
    TrialRow,
    best_trial,
    check_sweep,
    expected_trials,
    format_table,
    grace_steps,
    num_samples,
    plan_sweep,
    search_space,
    sweep_base,
    trial_config,
    write_results,
)
from raytune_ft.tune.trial import POINTER_FILE, _run_name

REPO = Path(__file__).parents[2]


def sweep(tmp_path: Path, tune: dict[str, Any], **sections: Any) -> JobConfig:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**sections, "tune": tune}))
    return load_config(path)


def test_space_maps_onto_ray_tune_domains(tmp_path: Path) -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    cfg = sweep(tmp_path, {"space": {
        "train.learning_rate": {"loguniform": [1e-5, 1e-3]},
        "adapter.rank": {"choice": [4, 8, 16]},
        "adapter.alpha": {"randint": [8, 32]},
        "method.beta": {"uniform": [0.05, 0.5]},
        "train.weight_decay": {"grid": [0.0, 0.1]},
    }})  # fmt: skip
    space = search_space(cfg.tune)
    assert isinstance(space["train.learning_rate"], Float)
    assert (space["train.learning_rate"].lower, space["train.learning_rate"].upper) == (1e-5, 1e-3)
    assert isinstance(space["adapter.rank"], Categorical) and space["adapter.rank"].categories == [4, 8, 16]
    ranks = space["adapter.alpha"]
    assert isinstance(ranks, Integer) and (ranks.lower, ranks.upper) == (8, 33), "randint includes its high end"
    assert isinstance(space["method.beta"], Float)
    assert space["train.weight_decay"] == {"grid_search": [0.0, 0.1]}
    assert num_samples(cfg.tune) == 4 and expected_trials(cfg.tune) == 8


def test_grid_only_space_runs_each_point_once(tmp_path: Path) -> None:
    cfg = sweep(tmp_path, {"space": {"adapter.rank": {"grid": [4, 8]}, "train.learning_rate": {"grid": [1e-4, 1e-3]}}})
    assert num_samples(cfg.tune) == 1 and expected_trials(cfg.tune) == 4


@pytest.mark.parametrize(
    ("space", "scheduler", "message"),
    [
        ({"train.learnig_rate": {"choice": [1e-4]}}, "asha", "did you mean 'train.learning_rate'"),
        ({"lr": {"choice": [1e-4]}}, "asha", "give section.key"),
        ({"adapter.rank": {"uniform": [4, 16]}}, "asha", "got a number with a fractional part"),
        ({"adapter.rank": {"choice": [8, 0]}}, "asha", "adapter.rank=0 is not a valid config"),
        ({"train.lr_scheduler": {"choice": ["cosine", "exp"]}}, "asha", "train.lr_scheduler='exp'"),
        ({"data.cutoff_len": {"choice": [128, 256]}}, "asha", "trials share one tokenized dataset"),
        ({"method.stage": {"choice": ["sft", "dpo"]}}, "asha", "cannot be swept"),
        ({"scaling.num_workers": {"choice": [1, 2]}}, "asha", "cannot be swept"),
        ({"adapter.rank": {"choice": [4, 8], "grid": [2]}}, "asha", "exactly one of"),
        ({"train.learning_rate": {"loguniform": [0, 1e-3]}}, "asha", "loguniform needs low > 0"),
        ({"train.learning_rate": {"uniform": [1e-3, 1e-4]}}, "asha", "low < high"),
        ({"adapter.rank": {"choice": [4, 8]}}, "pbt", "pbt continues trials from other trials' checkpoints"),
    ],
)
def test_bad_space_is_one_clear_error(tmp_path: Path, space: dict[str, Any], scheduler: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"sweep\.yaml") as err:
        sweep(tmp_path, {"space": space, "scheduler": scheduler})
    assert message in str(err.value)


def test_sweepable_data_keys_and_overrides(tmp_path: Path) -> None:
    cfg = sweep(tmp_path, {"space": {"data.padding_free": {"choice": [True, False]}}})
    assert list(cfg.tune.space) == ["data.padding_free"]
    over = load_config(None, ["tune.space={train.learning_rate: {choice: [0.001, 0.01]}}", "tune.scheduler=fifo"])
    assert over.tune.space["train.learning_rate"].values == [0.001, 0.01]


def test_a_sweep_needs_keys_and_a_validation_split_for_eval_metrics(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tune\.space is empty"):
        check_sweep(load_config(None))
    no_eval = sweep(tmp_path, {"space": {"train.learning_rate": {"choice": [1e-3]}}})
    with pytest.raises(ConfigError, match=r"tune.metric eval_loss is measured on a validation split.*data.val_size"):
        check_sweep(no_eval)
    check_sweep(no_eval.model_copy(update={"tune": no_eval.tune.model_copy(update={"metric": "loss"})}))
    check_sweep(sweep(tmp_path, {"space": {"train.learning_rate": {"choice": [1e-3]}}}, data={"val_size": 0.1}))
    with pytest.raises(ConfigError, match=r"storage URIs \(s3://, gs://\) work for train but not yet for tune"):
        check_sweep(load_config(None, ["tune.space={adapter.rank: {choice: [4]}}", "tune.metric=loss",
                                       "train.storage_path=s3://bucket/saves"]))  # fmt: skip
    online = ["tune.space={method.kl_coef: {choice: [0.01, 0.1]}}", "method.stage=grpo", "method.kl=k3"]
    with pytest.raises(
        ConfigError, match=r"tune.metric eval_loss: method.stage grpo measures .* by reward.*eval_reward"
    ):
        check_sweep(load_config(None, online))
    check_sweep(load_config(None, [*online, "tune.metric=reward", "tune.mode=max"]))
    with pytest.raises(ConfigError, match=r"tune.metric eval_reward is measured on a validation split"):
        check_sweep(load_config(None, [*online, "tune.metric=eval_reward", "tune.mode=max"]))
    check_sweep(load_config(None, [*online, "tune.metric=eval_reward", "tune.mode=max", "data.val_size=0.1"]))


def test_trials_use_tune_scaling_and_fit_the_cluster(tmp_path: Path) -> None:
    cfg = sweep(tmp_path, {"space": {"adapter.rank": {"choice": [4]}}, "scaling": {"num_workers": 2}},
                scaling={"num_workers": 4, "strategy": "fsdp2"})  # fmt: skip
    base = sweep_base(cfg)
    assert base.scaling.num_workers == 2 and base.scaling.strategy == "ddp" and not base.tune.space
    assert plan_sweep(cfg, cluster_cpus=8).concurrency == 4
    small = plan_sweep(cfg, cluster_cpus=2)
    assert small.concurrency == 1 and small.cpus_per_worker * 2 + 0.01 <= 2, "one trial shrinks to fit"
    capped = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"max_concurrent_trials": 1})})
    assert plan_sweep(capped, cluster_cpus=8).concurrency == 1
    gpus = load_config(None, ["scaling.use_gpu=true", "scaling.num_workers=2"])
    assert plan_sweep(gpus, cluster_cpus=32, cluster_gpus=8).concurrency == 4


def test_online_trials_count_their_separate_engines(tmp_path: Path) -> None:
    """Colocated engines reserve nothing; separate ones take their CPUs from every trial's share."""
    grpo = ["method.stage=grpo", "tune.space={method.epsilon: {choice: [0.1, 0.2]}}"]
    assert plan_sweep(load_config(None, grpo), cluster_cpus=8).concurrency == 8
    apart = load_config(
        None, [*grpo, "rollout.placement=separate", "rollout.num_engines=2", "rollout.cpus_per_engine=1.5"]
    )
    assert plan_sweep(apart, cluster_cpus=8).concurrency == 2  # 1 worker CPU + 2 x 1.5 engine CPUs per trial
    small = plan_sweep(apart, cluster_cpus=4)
    assert small.concurrency == 1 and small.cpus_per_worker + 3 + 0.01 <= 4, "the worker shrinks to fit beside them"


def test_trial_config_applies_the_draw_and_names_the_run(tmp_path: Path) -> None:
    cfg = sweep(tmp_path, {"space": {"adapter.rank": {"choice": [4, 16]}}})
    trial = trial_config(sweep_base(cfg), {"adapter.rank": 16, "train.learning_rate": 3e-4}, "abc_00001", "/s/trials")
    assert (trial.adapter.rank, trial.train.learning_rate) == (16, 3e-4)
    assert (trial.train.run_name, trial.train.storage_path) == ("abc_00001", "/s/trials")


def test_schedulers_registry(tmp_path: Path) -> None:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    cfg = sweep(tmp_path, {"space": {"train.learning_rate": {"loguniform": [1e-5, 1e-3]}}, "reduction_factor": 2},
                train={"eval_steps": 5, "save_steps": 10}, data={"val_size": 0.1})  # fmt: skip
    assert grace_steps(cfg, 100) == 5 and grace_steps(cfg, 3) == 3
    asha = SCHEDULERS["asha"](cfg, 40)
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "step" and asha._max_t == 40
    pbt = SCHEDULERS["pbt"](cfg, 40)
    assert isinstance(pbt, PopulationBasedTraining) and pbt._perturbation_interval == 10
    assert isinstance(SCHEDULERS["fifo"](cfg, 40), FIFOScheduler)


def restored_trial(storage_path: Path, trial_id: str, losses: dict[int, float]) -> Any:
    """A Tune trial as ``Tuner.restore`` re-adds it: its ``result.json`` holds what it reported before."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial
    from ray.tune.registry import register_trainable

    register_trainable("run_trial", lambda config: None)
    storage = StorageContext(storage_path=str(storage_path), experiment_dir_name="sweep", trial_dir_name=trial_id)
    folder = Path(storage.trial_fs_path)
    if losses:
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"step": step, "eval_loss": loss} for step, loss in losses.items()]
        (folder / "result.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Trial("run_trial", config={}, trial_id=trial_id, storage=storage)


@pytest.mark.parametrize("scheduler", ["ours", "ray's"])
def test_asha_rungs_survive_a_restored_sweep(tmp_path: Path, scheduler: str) -> None:
    """Two trials finished before the interruption; the hopeless one starting after it is still stopped."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    cfg = sweep(tmp_path, {"space": {"train.learning_rate": {"grid": [1e-2, 3e-3, 1e-6]}}, "reduction_factor": 2},
                train={"eval_steps": 2, "save_steps": 4}, data={"val_size": 0.2})  # fmt: skip
    ray_asha = ASHAScheduler(time_attr="step", max_t=8, grace_period=2, reduction_factor=2)
    asha = SCHEDULERS["asha"](cfg, 8) if scheduler == "ours" else ray_asha
    asha.set_search_properties("eval_loss", "min")
    done = [
        restored_trial(tmp_path, "a", {2: 1.0, 4: 0.6, 6: 0.4, 8: 0.3}),
        restored_trial(tmp_path, "b", {2: 1.2, 4: 0.9}),
    ]
    late = restored_trial(tmp_path, "c", {})
    for trial in [*done, late]:
        asha.on_trial_add(None, trial)
    action = asha.on_trial_result(None, late, {"step": 2, "eval_loss": 2.5})
    expected = TrialScheduler.STOP if scheduler == "ours" else TrialScheduler.CONTINUE  # Ray's forgets the rungs
    assert action == expected


def test_pbt_trial_continues_another_trials_checkpoint_as_a_new_run(tmp_path: Path) -> None:
    from ray import tune

    trials = tmp_path / "trials"
    (trials / "t_00001" / "checkpoint-000004").mkdir(parents=True)
    pointer = tmp_path / "pointer"
    pointer.mkdir()

    def points_to(path: Path) -> Any:
        (pointer / POINTER_FILE).write_text(json.dumps({"checkpoint": str(path)}))
        return tune.Checkpoint.from_directory(pointer)

    assert _run_name(str(trials), "t_00000", None) == ("t_00000", None)
    # Its own checkpoint (a sweep continued after an interruption): Ray Train resumes the run by name.
    own = points_to(trials / "t_00000" / "checkpoint-000002")
    assert _run_name(str(trials), "t_00000", own) == ("t_00000", None)
    # Another trial's (PBT exploit): a new run starting from that checkpoint.
    name, start = _run_name(str(trials), "t_00000", points_to(trials / "t_00001" / "checkpoint-000004"))
    assert name == "t_00000-1" and start == str(trials / "t_00001" / "checkpoint-000004")
    (trials / "t_00000-1").mkdir()
    name, _ = _run_name(str(trials), "t_00000", points_to(trials / "t_00001" / "checkpoint-000004"))
    assert name == "t_00000-2"
    assert _run_name(str(trials), "t_00000", points_to(trials / "t_00000-1" / "checkpoint-000008"))[0] == "t_00000-1"


def rows() -> list[TrialRow]:
    def row(i: int, status: str, step: int, metric: float | None, lr: float) -> TrialRow:
        ckpt = f"/s/trials/t{i}/checkpoint-{step:06d}" if metric is not None else None
        return TrialRow(f"t{i}", status, {"train.learning_rate": lr}, step, 8, metric, 2.0, ckpt, f"/s/trials/t{i}")

    failed = TrialRow("t3", "error", {"train.learning_rate": 1.0}, None, None, None, None, None, None, "boom")
    return [row(0, "completed", 8, 1.5, 1e-3), row(1, "stopped early", 2, 2.5, 1e-5), row(2, "completed", 8, 1.2, 3e-3),
            failed]  # fmt: skip


def test_best_trial_table_and_results_files(tmp_path: Path) -> None:
    table = rows()
    best = best_trial(table, "min")
    assert best is not None and best.trial_id == "t2"
    assert best_trial(table, "max") is table[1]
    assert best_trial(table[3:], "min") is None

    text = format_table(table, "eval_loss", best).splitlines()
    assert text[0].split() == ["trial", "status", "steps", "train.learning_rate", "eval_loss", "loss"]
    assert text[2].split()[:4] == ["t1", "stopped", "early", "2/8"], "ASHA-stopped trials are marked"
    assert text[3].startswith("*") and "t2" in text[3]

    base = load_config(None, ["train.run_name=sw", "data.val_size=0.1"])
    files = write_results(tmp_path, table, best, base, "sw-best", "eval_loss")
    with files.csv.open() as f:
        read = list(csv.DictReader(f))
    assert [r["status"] for r in read] == ["completed", "stopped early", "completed", "error"]
    assert read[2]["eval_loss"] == "1.2" and read[2]["train.learning_rate"] == "0.003" and read[3]["error"] == "boom"
    summary = json.loads(files.json.read_text())
    assert summary["best_trial"] == "t2" and summary["metric"] == "eval_loss" and len(summary["trials"]) == 4
    assert files.best_config is not None
    again = load_config(files.best_config)
    assert again.train.learning_rate == 3e-3 and again.train.run_name == "sw-best"
    assert again.model_copy(update={"train": base.train}) == base, "only the drawn values and the run name change"


def test_shipped_sweep_config_is_runnable() -> None:
    cfg = load_config(REPO / "configs" / "tune_lora.yaml")
    check_sweep(cfg)
    assert set(cfg.tune.space) == {"train.learning_rate", "adapter.rank"} and cfg.tune.scheduler == "asha"
    assert expected_trials(cfg.tune) == 6


def test_a_sweep_folder_is_only_continued_under_its_own_config(tmp_path: Path) -> None:
    from raytune_ft.config import dump_config
    from raytune_ft.tune.sweep import SWEEP_FILE, _check_same_sweep

    cfg = sweep(tmp_path, {"space": {"train.learning_rate": {"choice": [1e-3, 1e-2]}}}, train={"run_name": "sw"})
    folder = tmp_path / "saves" / "sw"
    assert _check_same_sweep(cfg, folder) is False, "a new sweep"
    folder.mkdir(parents=True)
    (folder / "checkpoint-000010").mkdir()
    with pytest.raises(ConfigError, match="already exists and is not a raytune-ft sweep"):
        _check_same_sweep(cfg, folder)
    (folder / SWEEP_FILE).write_text(dump_config(cfg))
    assert _check_same_sweep(cfg, folder) is False, "started, but Tune saved no state yet: start it anew"
    other = load_config(tmp_path / "sweep.yaml", ["tune.num_samples=8"])
    with pytest.raises(ConfigError, match=r"was started with another config .*choose a new train\.run_name"):
        _check_same_sweep(other, folder)
