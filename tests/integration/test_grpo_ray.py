"""GRPO on local Ray with vLLM rollout engines as actors, on a tiny random model: the reward rises, the
engines generate with the weights the trainer just published, runs resume, and a killed engine is
replaced without losing the run."""

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
    """A 2-layer llama with random weights whose head size vLLM's CPU attention supports (64)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("policy")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


REWARD = "tests.integration.rl_rewards:even_tokens"


def grpo_job(
    model: Path,
    storage: Path,
    name: str,
    steps: int,
    adapter: str = "lora",
    lr: float = 0.05,
    group: int = 4,
    overlap: str = "off",
    **rollout: Any,
) -> JobConfig:
    return JobConfig.model_validate({
        "model": {"source": str(model)},
        "data": {"dataset": "arithmetic_1k", "cutoff_len": 96, "max_samples": 200},
        "method": {"stage": "grpo", "loss": "grpo", "group_size": group, "reward": REWARD, "max_new_tokens": 12},
        "adapter": {"type": adapter, "rank": 8, "alpha": 16},
        "rollout": {"prompts_per_step": 4, "async": overlap, **rollout},
        "train": {"run_name": name, "storage_path": str(storage), "learning_rate": lr, "max_steps": steps,
                  "per_device_batch_size": 32, "logging_steps": 1, "save_steps": 4, "lr_scheduler": "constant"},
    })  # fmt: skip


def metrics(run_dir: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("placement", ["colocated", "separate"])
def test_reward_rises_with_synced_engines(policy_dir: Path, tmp_path: Path, placement: str) -> None:
    """Full tuning, whose whole weights are published after every step: 16 steps raise the mean reward of
    the last 4 by at least 0.15 (of 1) over the first 4, and the engine's log-probs of its answers equal the trained
    policy's after every update (the policy moved, the gap did not)."""
    from raytune_ft.rl.launch import run_online

    extra = {"placement": placement, "cpus_per_engine": 0.5} if placement == "separate" else {}
    outcome = run_online(
        grpo_job(
            policy_dir, tmp_path, f"grpo-{placement}", 16, adapter="full", lr=2e-2, group=8, prompts_per_step=8, **extra
        )
    )
    logged = metrics(outcome.run_dir)
    rewards = [m["reward"] for m in logged]
    assert [m["step"] for m in logged] == list(range(1, 17))
    assert mean(rewards[-4:]) >= mean(rewards[:4]) + 0.15, rewards
    assert max(m["rollout/logprob_gap"] for m in logged) < 2e-3, [m["rollout/logprob_gap"] for m in logged]
    assert all(m["rollout/tokens_per_s"] > 0 and m["response_length"] > 0 for m in logged)
    assert outcome.checkpoint is not None and Path(outcome.checkpoint, "model.safetensors").is_file()


def test_one_step_overlap_trains_on_answers_one_update_old(policy_dir: Path, tmp_path: Path) -> None:
    """rollout.async one_step: step 1's answers come from the weights it trains (no gap); every later step's
    from the weights before the previous update, so the engine's log-probs differ from the policy's."""
    from raytune_ft.rl.launch import run_online

    outcome = run_online(grpo_job(policy_dir, tmp_path, "overlap", 5, overlap="one_step"))
    gaps = [m["rollout/logprob_gap"] for m in metrics(outcome.run_dir)]
    assert len(gaps) == 5 and gaps[0] < 2e-3 and min(gaps[1:]) > 1e-3, gaps


def test_a_run_resumes_where_it_stopped(policy_dir: Path, tmp_path: Path) -> None:
    from raytune_ft.rl.launch import run_online

    first = run_online(grpo_job(policy_dir, tmp_path, "resumed", 4))
    second = run_online(grpo_job(policy_dir, tmp_path, "resumed", 8))
    assert first.run_dir == second.run_dir
    assert [m["step"] for m in metrics(second.run_dir)] == list(range(1, 9))
    assert Path(second.checkpoint or "").name == "checkpoint-000008"


def test_a_killed_engine_is_replaced_and_the_run_finishes(policy_dir: Path, tmp_path: Path) -> None:
    """The engine is killed after step 2; Ray restarts it, it catches up with the published weights, and the
    generation it lost runs again."""
    import ray

    from raytune_ft.rl.engine import engine_name
    from raytune_ft.rl.launch import run_online

    cfg = grpo_job(policy_dir, tmp_path, "killed", 6)
    log = tmp_path / "killed" / "metrics.jsonl"
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
    logged = metrics(outcome.run_dir)
    assert [m["step"] for m in logged] == list(range(1, 7))
    assert any(m["time"] > killed[0] for m in logged)  # steps ran after the kill
    assert max(m["rollout/logprob_gap"] for m in logged) < 2e-3  # the new engine caught up with the weights
