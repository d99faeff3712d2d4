"""PPO on a real (tiny) model: the policy-and-critic model, its checkpoint, the objective's loss written out,
and the pieces the feed builds its targets from (KL-penalised rewards, the adaptive KL coefficient,
running reward moments), each against its closed form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import JobConfig, MethodConfig
from raytune_ft.data import IGNORE_INDEX, pad_batch
from raytune_ft.models import CRITIC_WEIGHTS, CheckpointError, attach_head
from raytune_ft.train.losses import (
    Moments,
    adaptive_kl_coef,
    clipped_policy_loss,
    gae,
    kl_penalized_rewards,
    update_moments,
    value_loss,
)
from raytune_ft.train.objectives import PPOObjective
from raytune_ft.train.reference import policy_outputs


def lm(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


@pytest.fixture()
def policy(tiny_model_dir: Path) -> Any:
    return attach_head(lm(tiny_model_dir), "ppo")


def method(**more: Any) -> MethodConfig:
    return JobConfig.model_validate({"method": {"stage": "ppo", **more}}).method


def rollout(policy: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    """Four answers of 2..5 tokens to 3-token prompts, with the targets the feed would give them."""
    generator = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for i in range(4):
        prompt = torch.randint(10, 500, (3,), generator=generator).tolist()
        answer = torch.randint(10, 500, (2 + i,), generator=generator).tolist()
        ids.append(prompt + answer)
        labels.append([IGNORE_INDEX] * 3 + answer)
    batch = pad_batch(ids, labels, 0)
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    with torch.no_grad():
        logps, _, out = policy_outputs(policy, batch)
    batch["old_logps"], batch["old_values"] = logps, out["values"][:, :-1] * mask
    rewards = kl_penalized_rewards(torch.tensor([1.0, -1.0, 0.5, 2.0]), torch.zeros_like(logps), mask, 0.2)
    batch["advantages"], batch["returns"] = gae(rewards, batch["old_values"], mask, 1.0, 0.95)
    return batch


def test_the_critic_rides_along_the_policy_forward(policy: Any) -> None:
    batch = rollout(policy)
    out = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out["values"].shape == batch["input_ids"].shape and out["values"].dtype == torch.float32
    assert out.logits.shape[:2] == batch["input_ids"].shape
    plain = policy.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(out.logits, plain)  # the head changes nothing of the policy


def test_the_lora_reference_is_the_base_lm_without_the_critic(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base = lm(tiny_model_dir)
    batch = rollout(attach_head(lm(tiny_model_dir), "ppo"))
    expected = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    policy = attach_head(get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])), "ppo")
    for name, weight in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight)  # the adapters now change the output
    with torch.no_grad(), policy.disable_adapter():
        off = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert "values" not in off and off.hidden_states is None
    torch.testing.assert_close(off.logits, expected)
    on = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert on["values"].shape == batch["input_ids"].shape, "the critic is back once the adapters are"
    assert not torch.allclose(on.logits, expected)


def test_loss_is_the_clipped_surrogate_plus_the_weighted_value_loss(policy: Any) -> None:
    batch = rollout(policy)
    cfg = method(vf_coef=0.5, value_clip=0.1)
    batch["returns"] = batch["returns"] + 1.0  # values must move: the value loss is not zero
    objective = PPOObjective(cfg, None)
    got = objective.loss_sum(policy, batch) / objective.terms(batch)
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    logps, _, out = policy_outputs(policy, batch)
    surrogate = clipped_policy_loss(logps, batch["old_logps"], batch["advantages"], 0.2, 0.2).per_token
    critic = value_loss(out["values"][:, :-1], batch["old_values"], batch["returns"], 0.1)
    torch.testing.assert_close(got, (surrogate + 0.5 * critic)[mask].mean())
    metrics = objective.metrics()
    assert metrics["value_loss"][1] == mask.sum() and metrics["value_loss"][0] > 0


def test_steps_move_values_to_the_returns_and_only_trainable_weights(policy: Any) -> None:
    batch = rollout(policy)
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    objective = PPOObjective(method(vf_coef=1.0, value_clip=None), None)
    policy.lm.requires_grad_(False)  # only the head trains: the critic alone must fit the returns
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=0.05)

    def value_error() -> float:
        with torch.no_grad():
            values = policy_outputs(policy, batch)[2]["values"][:, :-1]
        return float(((values - batch["returns"]) ** 2)[mask].mean())

    frozen = {name: p.detach().clone() for name, p in policy.lm.named_parameters()}
    before = value_error()
    for _ in range(20):
        optimizer.zero_grad()
        (objective.loss_sum(policy, batch) / objective.terms(batch)).backward()
        optimizer.step()
    assert value_error() < 0.5 * before
    assert all(torch.equal(p, frozen[name]) for name, p in policy.lm.named_parameters())


def test_the_critic_head_saves_apart_and_restores(policy: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    with torch.no_grad():
        policy.value_head.weight.add_(1.0)
    policy.save_pretrained(tmp_path, policy.state_dict())
    assert (tmp_path / CRITIC_WEIGHTS).is_file() and not (tmp_path / "value_head.safetensors").exists()
    assert {p.name for p in tmp_path.glob("*.safetensors")} == {"model.safetensors"}  # what loaders glob: the LM
    restored = attach_head(lm(tiny_model_dir), "ppo", tmp_path)
    torch.testing.assert_close(restored.value_head.weight, policy.value_head.weight)
    (tmp_path / CRITIC_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="not a PPO checkpoint"):
        attach_head(lm(tiny_model_dir), "ppo", tmp_path)


def test_kl_penalised_rewards_put_the_score_on_the_last_answer_token() -> None:
    kl = torch.tensor([[0.0, 0.5, 1.0, 2.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]).bool()
    rewards = kl_penalized_rewards(torch.tensor([3.0, -1.0]), kl, mask, kl_coef=0.1)
    expected = torch.tensor([[0.0, -0.05, -0.1, -0.2 + 3.0, 0.0], [0.0, 0.0, -0.1 - 1.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_adaptive_kl_moves_towards_the_target_at_most_by_the_clip() -> None:
    """Ziegler et al. 2019, sec. 2.2: beta (1 + clip(KL / target - 1, -0.2, 0.2) n / horizon)."""
    assert adaptive_kl_coef(0.2, 6.0, 6.0, 64) == 0.2
    assert adaptive_kl_coef(0.2, 6.6, 6.0, 100) == pytest.approx(0.2 * (1 + 0.1 * 100 / 10_000))
    assert adaptive_kl_coef(0.2, 60.0, 6.0, 100) == pytest.approx(0.2 * (1 + 0.2 * 100 / 10_000))
    assert adaptive_kl_coef(0.2, 0.0, 6.0, 100) == pytest.approx(0.2 * (1 - 0.2 * 100 / 10_000))


def test_running_moments_equal_those_of_all_values_seen() -> None:
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, generator=generator) * 3 + 1 for n in (5, 8, 3)]
    moments = Moments()
    for values in batches:
        var, mean = torch.var_mean(values, unbiased=False)
        moments = update_moments(moments, float(mean), float(var), values.numel())
    every = torch.cat(batches)
    assert moments.n == every.numel()
    assert moments.mean == pytest.approx(float(every.mean()), abs=1e-5)
    assert moments.std == pytest.approx(float(every.std()), abs=1e-5)


def test_ppo_defaults_and_refusals() -> None:
    cfg = method()
    assert (cfg.loss, cfg.group_size, cfg.kl, cfg.kl_coef, cfg.ppo_epochs) == ("ppo", 1, "k1", 0.2, 4)
    assert method(group_size=2, kl="none", ppo_epochs=1).group_size == 2
    with pytest.raises(ValueError, match="not a loss of stage ppo"):
        method(loss="grpo")
    with pytest.raises(ValueError, match="use 2 or more"):
        JobConfig.model_validate({"method": {"stage": "grpo", "group_size": 1}})
    with pytest.raises(ValueError, match="applies to stage ppo"):
        JobConfig.model_validate({"method": {"stage": "grpo", "ppo_buffer_size": 2}})
    with pytest.raises(ValueError, match=r"make rollout\.prompts_per_step a multiple of 6"):
        JobConfig.model_validate(
            {"method": {"stage": "ppo", "ppo_buffer_size": 3}, "rollout": {"prompts_per_step": 8},
             "scaling": {"num_workers": 2}}
        )  # fmt: skip
