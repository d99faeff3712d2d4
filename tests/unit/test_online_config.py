"""The online stage's config: its defaults, its losses, and the combinations it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from raytune_ft.config import JobConfig


def job(**sections: dict) -> JobConfig:
    return JobConfig.model_validate({"method": {"stage": "grpo"}, **sections})


def test_grpo_defaults() -> None:
    cfg = job()
    assert cfg.method.loss == "grpo" and cfg.method.rows == "prompt" and cfg.method.online
    assert not cfg.method.needs_reference  # method.kl: none holds no reference
    assert cfg.method.clip_high == cfg.method.epsilon


def test_dapo_clips_higher_unless_told() -> None:
    assert job(method={"stage": "grpo", "loss": "dapo"}).method.clip_high == 0.28
    assert job(method={"stage": "grpo", "loss": "dapo", "epsilon_high": 0.3}).method.clip_high == 0.3


def test_a_kl_estimator_asks_for_a_reference() -> None:
    assert job(method={"stage": "grpo", "kl": "k3"}).method.needs_reference


@pytest.mark.parametrize(
    ("sections", "says"),
    [
        ({"method": {"stage": "grpo", "loss": "sigmoid"}}, "not a loss of stage grpo"),
        ({"method": {"stage": "dpo", "loss": "dapo"}}, "not a loss of stage dpo"),
        ({"method": {"stage": "grpo", "reward": "a,b", "reward_weights": [1.0]}}, "one per reward"),
        (
            {"method": {"stage": "grpo"}, "rollout": {"prompts_per_step": 3}, "scaling": {"num_workers": 2}},
            "multiple of 2",
        ),
        ({"method": {"stage": "grpo"}, "train": {"gradient_accumulation_steps": 2}}, "set it to 1"),
        ({"method": {"stage": "grpo", "kl": "k3", "reference": "precomputed"}}, "use live"),
        ({"method": {"stage": "grpo"}, "scaling": {"use_gpu": True}}, "placement: separate"),
        ({"method": {"stage": "grpo"}, "rollout": {"weight_sync": "broadcast"}}, "use weight_sync: store or auto"),
        (
            {
                "method": {"stage": "grpo"},
                "adapter": {"type": "full"},
                "scaling": {"use_gpu": True},
                "rollout": {"weight_sync": "broadcast", "placement": "separate", "gpus_per_engine": 0.5},
            },
            "one whole GPU per engine",
        ),
        (
            {
                "method": {"stage": "grpo"},
                "adapter": {"type": "full"},
                "rollout": {"weight_sync": "broadcast", "engine_kwargs": {"tensor_parallel_size": 2}},
            },
            "tensor_parallel_size 1",
        ),
    ],
)
def test_refused_combinations_say_why(sections: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        JobConfig.model_validate(sections)


def test_rollout_async_reads_as_written_in_yaml(tmp_path: Path) -> None:
    """`async: off` is YAML 1.1's false; the key round-trips through a checkpoint's config under its own name."""
    from raytune_ft.config import dump_config, load_config

    path = tmp_path / "job.yaml"
    path.write_text("method:\n  stage: grpo\nrollout:\n  async: off\n")
    assert load_config(path).rollout.async_ == "off"
    cfg = load_config(path, ["rollout.async=one_step"])
    assert "async: one_step" in dump_config(cfg)
    (tmp_path / "again.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "again.yaml").rollout.async_ == "one_step"


@pytest.mark.parametrize(
    ("reward", "says"),
    [
        ("exact_mach", r"unknown reward 'exact_mach'.*did you mean 'exact_match'"),
        ("no_such_pkg.rewards:score", r"reward 'no_such_pkg.rewards:score': cannot import it"),
        ("rm:/no/such/run", r"/no/such/run: no raytune_ft checkpoint here"),
    ],
)
def test_a_wrong_reward_fails_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reward: str, says: str
) -> None:
    """`raytune-ft train` refuses it with exit 2 and the reward's name, before Ray, data or engines start."""
    import re

    from raytune_ft.cli import main

    config, saves = tmp_path / "grpo.yaml", tmp_path / "saves"
    config.write_text(f"method: {{stage: grpo, reward: {reward}}}\ntrain: {{storage_path: {saves}}}\n")
    assert main(["train", str(config)]) == 2
    assert re.search(says, capsys.readouterr().err)
    assert not saves.exists(), "nothing was written"


@pytest.mark.parametrize(
    ("adapter", "gpus", "chosen"),
    [("lora", False, "store"), ("full", False, "store"), ("lora", True, "store"), ("full", True, "broadcast"),
     ("freeze", True, "broadcast"), ("full", 0.5, "store")],
)  # fmt: skip
def test_weight_sync_auto_broadcasts_whole_weights_between_gpus(adapter: str, gpus: float, chosen: str) -> None:
    """``gpus``: GPUs per engine (0: a CPU run); NCCL takes a whole GPU per member, so half a GPU stays on the store."""
    from raytune_ft.rl.sync import weight_sync

    rollout = {"placement": "separate", "gpus_per_engine": float(gpus)} if gpus else {}
    cfg = job(adapter={"type": adapter}, scaling={"use_gpu": bool(gpus)}, rollout=rollout)
    assert cfg.rollout.weight_sync == "auto" and weight_sync(cfg) == chosen
