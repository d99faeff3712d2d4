"""GRPO and PPO on local Ray with vLLM rollout engines as actors, on a tiny random model: the reward rises,
the engines generate with the weights the trainer just published, runs resume, a killed engine is
replaced without losing the run, and a reward model trained with stage rm scores the answers."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from raytune_ft.config import JobConfig

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A 2-layer llama with random weights whose head size vLLM's CPU attention supports (64), initialised wide
    so that its answers differ enough for a reward to separate them."""
    from tests.tiny_models import save_tiny_llama

    return save_tiny_llama(
        tmp_path_factory.mktemp("policy"), tokenizer, hidden_size=128, intermediate_size=256, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, initializer_range=0.5,
    )  # fmt: skip


REWARD = "tests.integration.rl_rewards:even_tokens"
VALUE = "tests.integration.rl_rewards:answer_value"  # scores the question: its held-out mean is known


def grpo_job(
    model: Path,
    storage: Path,
    name: str,
    steps: int,
    adapter: str = "lora",
    lr: float = 0.05,
    group: int = 4,
    overlap: str = "off",
    reward: str = REWARD,
    **rollout: Any,
) -> JobConfig:
    return JobConfig.model_validate({
        "model": {"source": str(model)},
        "data": {"dataset": "arithmetic_1k", "cutoff_len": 96, "max_samples": 200},
        "method": {"stage": "grpo", "loss": "grpo", "group_size": group, "reward": reward, "max_new_tokens": 12},
        "adapter": {"type": adapter, "rank": 8, "alpha": 16},
        "rollout": {"prompts_per_step": 4, "async": overlap, **rollout},
        "train": {"run_name": name, "storage_path": str(storage), "learning_rate": lr, "max_steps": steps,
                  "per_device_batch_size": 32, "logging_steps": 1, "save_steps": 4, "lr_scheduler": "constant"},
    })  # fmt: skip


def metrics(run_dir: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_reward_rises_with_synced_separate_engines(policy_dir: Path, tmp_path: Path) -> None:
    """Full tuning on an engine placed apart (its own CPU), whose whole weights are broadcast to it after every
    step (rollout.weight_sync broadcast, over gloo): 16 steps raise the mean reward of the last 4 by at least 0.15
    (of 1) over the first 4, and the engine's log-probs of its answers equal the trained policy's after every
    update (the policy moved, the gap did not). Colocated engines, synced through the object store, learn the
    same way in the reward-model test below."""
    from raytune_ft.rl.launch import run_online

    job = grpo_job(policy_dir, tmp_path, "grpo-separate", 16, adapter="full", lr=2e-2, group=8, prompts_per_step=8,
                   placement="separate", cpus_per_engine=0.5, weight_sync="broadcast")  # fmt: skip
    outcome = run_online(job)
    logged = metrics(outcome.run_dir)
    rewards = [m["reward"] for m in logged]
    assert [m["step"] for m in logged] == list(range(1, 17))
    assert mean(rewards[-4:]) >= mean(rewards[:4]) + 0.15, rewards
    assert max(m["rollout/logprob_gap"] for m in logged) < 2e-3, [m["rollout/logprob_gap"] for m in logged]
    assert all(m["rollout/tokens_per_s"] > 0 and m["response_length"] > 0 for m in logged)
    assert outcome.checkpoint is not None and Path(outcome.checkpoint, "model.safetensors").is_file()


@pytest.mark.parametrize("strategy", ["fsdp2", "deepspeed"])
def test_sharded_workers_publish_whole_weights(policy_dir: Path, tmp_path: Path, strategy: str) -> None:
    """Two LoRA workers under a sharding strategy, REINFORCE++ (whitened over both workers' answers), two
    updates per generated batch: the adapter is gathered from the shards, the engine generates with it (its
    log-probs equal the policy's at each step that generated), and the run checkpoints. The held-out prompts
    (data.eval_dataset) are answered and scored once each at the last step, split between the workers."""
    from raytune_ft.data import BUILTIN_DATASETS
    from raytune_ft.rl.launch import run_online

    cfg = grpo_job(policy_dir, tmp_path, strategy, 3).model_dump(mode="json", by_alias=True)
    cfg["scaling"] = {"num_workers": 2, "strategy": strategy}
    cfg["method"].update(loss="reinforce_pp", ppo_epochs=2, reward=[REWARD, VALUE], reward_weights=[1.0, 0.0])
    cfg["data"]["eval_dataset"] = "arithmetic_test_200"
    outcome = run_online(JobConfig.model_validate(cfg))
    logged = metrics(outcome.run_dir)
    assert [m["step"] for m in logged] == [1, 2, 3]
    gaps = [m["rollout/logprob_gap"] for m in logged]
    assert max(gaps[0], gaps[2]) < 2e-3 and gaps[1] > gaps[0], gaps  # step 2 reuses step 1's answers
    assert outcome.checkpoint is not None and Path(outcome.checkpoint, "adapter_model.safetensors").is_file()
    held_out = [json.loads(line) for line in BUILTIN_DATASETS["arithmetic_test_200"].read_text().splitlines()]
    evaluated = logged[-1]
    assert evaluated[f"eval_reward/{VALUE}"] == pytest.approx(mean([float(r["answer"]) / 100 for r in held_out]))
    assert evaluated["eval_reward"] == pytest.approx(evaluated[f"eval_reward/{REWARD}"])
    assert 0 < evaluated["eval_response_length"] <= 12 and "eval_reward" not in logged[0]


def test_one_step_overlap_trains_on_answers_one_update_old(policy_dir: Path, tmp_path: Path) -> None:
    """rollout.async one_step: step 1's answers come from the weights it trains (no gap); every later step's
    from the weights before the previous update, so the engine's log-probs differ from the policy's."""
    from raytune_ft.rl.launch import run_online

    outcome = run_online(grpo_job(policy_dir, tmp_path, "overlap", 5, overlap="one_step"))
    gaps = [m["rollout/logprob_gap"] for m in metrics(outcome.run_dir)]
    assert len(gaps) == 5 and gaps[0] < 2e-3 and min(gaps[1:]) > 1e-3, gaps


def test_a_run_resumes_where_it_stopped(policy_dir: Path, tmp_path: Path) -> None:
    """DAPO whose groups never differ (every answer scores the same): each step generates for 1 + max_refills
    batches of prompts in search of informative groups, and a resumed run goes on after the last one used."""
    from raytune_ft.rl.launch import run_online

    def job(steps: int) -> JobConfig:
        cfg = grpo_job(policy_dir, tmp_path, "resumed", steps, reward="tests.integration.rl_rewards:same_for_all")
        dump = cfg.model_dump(mode="json", by_alias=True)
        dump["method"].update(loss="dapo", max_refills=2)
        return JobConfig.model_validate(dump)

    def position(run: Any) -> tuple[int, int]:
        state = json.loads(Path(run.checkpoint or "", "trainer_state.json").read_text())
        return state["epoch"], state["batches_in_epoch"]

    first = run_online(job(2))
    assert position(first) == (0, 6), "2 steps x 3 batches of prompts (200 prompts: 50 batches an epoch)"
    second = run_online(job(4))
    assert first.run_dir == second.run_dir and Path(first.checkpoint or "").name == "checkpoint-000002"
    logged = metrics(second.run_dir)
    assert [m["step"] for m in logged] == list(range(1, 5))
    assert [(m["rollout/refills"], m["rollout/groups_kept"]) for m in logged] == [(2.0, 0.0)] * 4
    assert Path(second.checkpoint or "").name == "checkpoint-000004" and position(second) == (0, 12)


def run_killing_engine_0(cfg: JobConfig, log: Path) -> tuple[Any, float]:
    """Run ``cfg`` and kill its engine 0 (Ray restarts it) once ``log`` holds 2 steps: the outcome and the kill's
    time."""
    import ray

    from raytune_ft.rl.engine import engine_name
    from raytune_ft.rl.launch import run_online

    killed: list[float] = []

    def kill_engine_once() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if log.is_file() and len(log.read_text().splitlines()) >= 2:
                ray.kill(ray.get_actor(engine_name(cfg, 0)), no_restart=False)
                killed.append(time.time())
                return
            time.sleep(0.2)

    thread = threading.Thread(target=kill_engine_once, daemon=True)
    thread.start()
    outcome = run_online(cfg)
    thread.join(timeout=5)
    assert killed, "the engine was never killed"
    return outcome, killed[0]


def test_a_killed_engine_is_replaced_and_the_run_finishes(
    policy_dir: Path, tmp_path: Path, adapter_checkpoint: Any
) -> None:
    """The run starts from two adapters (adapter.init_from): a LoRA of the MLP merged into the base and a DoRA
    adapter of the attention it continues. The engine is killed after step 2; Ray restarts it, it loads the
    merged MLP weights again, catches up with the published DoRA weights, and the generation it lost runs
    again."""

    mlp = ("gate_proj", "up_proj", "down_proj")
    merged = adapter_checkpoint(policy_dir, tmp_path / "merged", 1, 1, source=str(policy_dir), targets=mlp)
    continued = adapter_checkpoint(policy_dir, tmp_path / "continued", 1, 2, source=str(policy_dir), dora=True)
    dump = grpo_job(policy_dir, tmp_path, "killed", 6).model_dump(mode="json", by_alias=True)
    dump["adapter"]["init_from"] = [str(merged), str(continued)]
    cfg = JobConfig.model_validate(dump)
    outcome, killed = run_killing_engine_0(cfg, tmp_path / "killed" / "metrics.jsonl")
    logged = metrics(outcome.run_dir)
    assert [m["step"] for m in logged] == list(range(1, 7))
    assert any(m["time"] > killed for m in logged)  # steps ran after the kill
    assert max(m["rollout/logprob_gap"] for m in logged) < 2e-3  # the new engine caught up with the weights


def test_a_killed_engine_under_broadcast_sync_is_taken_in_by_the_resumed_workers(
    policy_dir: Path, tmp_path: Path
) -> None:
    """Full tuning broadcast to two engines (rollout.weight_sync broadcast). The engine the worker generates with
    is killed after step 2: Ray restarts it with no weights to catch up from, the step that needs it fails, the
    workers resume from checkpoint 2 (scaling.max_failures) and form a new group with both engines, and every
    step after that generates with the weights just trained."""

    dump = grpo_job(policy_dir, tmp_path, "killed-broadcast", 5, adapter="full", lr=2e-2, num_engines=2,
                    weight_sync="broadcast").model_dump(mode="json", by_alias=True)  # fmt: skip
    dump["train"]["save_steps"] = 2
    dump["scaling"] = {"max_failures": 1}
    cfg = JobConfig.model_validate(dump)
    outcome, killed = run_killing_engine_0(cfg, tmp_path / "killed-broadcast" / "metrics.jsonl")
    logged = metrics(outcome.run_dir)
    assert [m["step"] for m in logged] == list(range(1, 6))
    assert all(m["time"] > killed for m in logged[2:])  # steps 3-5 ran again after the kill
    assert max(m["rollout/logprob_gap"] for m in logged) < 2e-3
    assert outcome.checkpoint is not None and Path(outcome.checkpoint, "model.safetensors").is_file()


def test_workers_restarted_from_scratch_make_the_engine_drop_newer_weights(policy_dir: Path, tmp_path: Path) -> None:
    """The training worker is killed after step 3, before any checkpoint (save_steps 4): the restarted workers
    begin again from the initial weights (scaling.max_failures), and the engine, which holds the weights of
    step 2 or 3, loads those again before it generates: every step's log-probs still equal the policy's."""
    import psutil

    dump = grpo_job(policy_dir, tmp_path, "restarted", 5).model_dump(mode="json", by_alias=True)
    dump["train"]["save_steps"] = 4
    dump["scaling"] = {"max_failures": 1}
    log = tmp_path / "restarted" / "metrics.jsonl"
    killed: list[int] = []

    def kill_worker_once() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            if log.is_file() and len(log.read_text().splitlines()) >= 3:
                for proc in psutil.process_iter(["pid", "cmdline"]):
                    if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
                        proc.kill()  # a worker of this test's own Ray
                        killed.append(proc.info["pid"])
                        return
            time.sleep(0.2)

    from raytune_ft.rl.launch import run_online

    thread = threading.Thread(target=kill_worker_once, daemon=True)
    thread.start()
    outcome = run_online(JobConfig.model_validate(dump))
    thread.join(timeout=5)
    assert killed, "the training worker was never killed"
    logged = metrics(outcome.run_dir)
    assert [m["step"] for m in logged] == list(range(1, 6))
    assert max(m["rollout/logprob_gap"] for m in logged) < 2e-3, [m["rollout/logprob_gap"] for m in logged]


def test_a_sweep_runs_each_trial_with_its_own_engines(policy_dir: Path, tmp_path: Path) -> None:
    """raytune-ft tune over a grpo key: two trials at once, each with its own engines (named after the trial), both
    trained, ranked by reward; no engine outlives its trial."""
    import ray

    from raytune_ft.tune import run_sweep

    base = grpo_job(policy_dir, tmp_path, "sweep", 4).model_dump(mode="json", by_alias=True)
    base["tune"] = {"space": {"train.learning_rate": {"grid": [1.0e-6, 0.05]}}, "scheduler": "fifo",
                    "metric": "reward", "mode": "max"}  # fmt: skip
    outcome = run_sweep(JobConfig.model_validate(base))
    assert [row.status for row in outcome.rows] == ["completed", "completed"], outcome.rows
    for row in outcome.rows:
        logged = metrics(row.run_dir or "")
        assert [m["step"] for m in logged] == [1, 2, 3, 4]
        assert row.metric == logged[-1]["reward"]
        assert max(m["rollout/logprob_gap"] for m in logged) < 2e-3  # each trial's engine follows its own policy
    assert outcome.best is not None and outcome.best.metric == max(row.metric or 0.0 for row in outcome.rows)
    alive = ray.util.list_named_actors(all_namespaces=True)
    assert not [actor for actor in alive if actor["name"].startswith("rollout-")], alive


@pytest.fixture(scope="module")
def reward_model(local_ray: None, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A reward model trained with stage rm on preference pairs, named as the reward ``rm:<run dir>``."""
    from raytune_ft.train import run_training

    rm = run_training(JobConfig.model_validate({
        "model": {"source": str(tiny_model_dir)},
        "data": {"dataset": "pref_300", "cutoff_len": 128},
        "method": {"stage": "rm"},
        "adapter": {"rank": 4},
        "train": {"run_name": "rm", "storage_path": str(tmp_path_factory.mktemp("rm")), "learning_rate": 3e-3,
                  "max_steps": 8, "save_steps": 8, "per_device_batch_size": 4},
    }))  # fmt: skip
    return f"rm:{rm.run_dir}"


def test_a_reward_model_served_by_an_actor_raises_its_own_score(
    policy_dir: Path, reward_model: str, tmp_path: Path
) -> None:
    """A reward model trained with stage rm, named as rm:<run dir>: its actor scores every answer, the fully
    tuned policy learns to please it on a colocated engine that generates with its published weights, and the
    actor is stopped with the run."""
    import ray

    from raytune_ft.rl.launch import run_online

    outcome = run_online(grpo_job(policy_dir, tmp_path, "judged", 12, adapter="full", lr=2e-2, group=8,
                                  prompts_per_step=8, reward=reward_model))  # fmt: skip
    logged = metrics(outcome.run_dir)
    scores = [m[f"reward/{reward_model}"] for m in logged]
    assert scores == pytest.approx([m["reward"] for m in logged], abs=1e-5)  # the only reward, weight 1
    assert mean(scores[-4:]) > mean(scores[:4]) + 0.1, scores  # 12 steps moved it 0.24 here (step std ~0.04)
    assert max(m["rollout/logprob_gap"] for m in logged) < 2e-3  # the colocated engine follows the whole weights
    alive = ray.util.list_named_actors(all_namespaces=True)
    assert not [actor for actor in alive if actor["name"].startswith(("reward-", "rollout-"))], alive


def ppo_job(model: Path, storage: Path, steps: int, reward: str) -> JobConfig:
    cfg = grpo_job(model, storage, "ppo", steps, reward=reward).model_dump(mode="json", by_alias=True)
    cfg["method"] = {"stage": "ppo", "reward": reward, "max_new_tokens": 12, "ppo_epochs": 2, "ppo_buffer_size": 2,
                     "ppo_target": 0.5, "ppo_score_norm": True}  # fmt: skip
    cfg["train"].update(learning_rate=1e-2, per_device_batch_size=2)
    return JobConfig.model_validate(cfg)


def test_ppo_with_a_reward_model_trains_and_resumes(policy_dir: Path, reward_model: str, tmp_path: Path) -> None:
    """PPO scored by our reward model: each generated batch makes ppo_epochs x ppo_buffer_size = 4 steps; the
    critic and the policy change, the engine follows the policy, and a run stopped at step 4 resumes to 8 with
    its critic, its adaptive KL coefficient and its reward moments."""
    from safetensors.torch import load_file

    from raytune_ft.models import CRITIC_WEIGHTS
    from raytune_ft.rl.launch import run_online

    first = run_online(ppo_job(policy_dir, tmp_path, 4, reward_model))
    saved = json.loads(Path(first.checkpoint or "", "trainer_state.json").read_text())["online"]
    assert {"kl_coef", "score_mean", "score_var", "score_n"} <= set(saved), saved
    assert saved["score_n"] == 4  # one answer to each of the batch's 4 prompts
    second = run_online(ppo_job(policy_dir, tmp_path, 8, reward_model))
    logged = metrics(second.run_dir)
    assert [m["step"] for m in logged] == list(range(1, 9))
    generated = [m for m in logged if "kl_coef" in m]
    assert [m["step"] for m in generated] == [1, 5]
    assert generated[1]["kl_coef"] == pytest.approx(saved["kl_coef"])  # resumed: the coefficient adapted at step 1
    assert generated[0]["kl_coef"] == pytest.approx(0.2) and saved["kl_coef"] != pytest.approx(0.2)
    assert all(m["value_loss"] >= 0 and 0 <= m["clip_ratio/low"] <= 1 for m in logged)
    assert max(m["rollout/logprob_gap"] for m in generated) < 2e-3  # engines generate with the published policy
    heads = [load_file(str(Path(run.checkpoint or "", CRITIC_WEIGHTS)))["weight"] for run in (first, second)]
    assert not heads[0].equal(heads[1])  # the critic kept training after the resume
    assert Path(second.checkpoint or "", "adapter_model.safetensors").is_file()


def test_engines_that_leave_ray_data_no_cpu_are_refused(
    policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One worker and a separate engine pinned to 1 CPU each on this 2-CPU Ray: refused before any actor starts."""
    from raytune_ft.cli import main
    from raytune_ft.config import dump_config

    config = tmp_path / "grpo.yaml"
    cfg = grpo_job(policy_dir, tmp_path, "starved", 2, placement="separate", cpus_per_engine=1.0)
    config.write_text(
        dump_config(cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"cpus_per_worker": 1.0})}))
    )
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "leave 0 of the cluster's 2 CPUs to Ray Data" in err and "rollout.cpus_per_engine (now 1;" in err, err
    assert not (tmp_path / "starved").exists()
