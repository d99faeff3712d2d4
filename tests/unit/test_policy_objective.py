"""The GRPO-family objective on a real (tiny) model: what the step core divides by, what the loss adds up
to, and that a step moves probability toward answers with positive advantage and away from negative ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from raytune_ft.config import JobConfig, MethodConfig
from raytune_ft.data import IGNORE_INDEX, pad_batch
from raytune_ft.train.losses import clipped_policy_loss
from raytune_ft.train.objectives import POLICY_SHAPES, PolicyObjective
from raytune_ft.train.reference import token_logps

MAX_NEW = 6


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def answers(advantages: list[float], seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of a 3-token prompt and an answer of 2..MAX_NEW tokens, with their advantages."""
    generator = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for i, _ in enumerate(advantages):
        prompt = torch.randint(10, 500, (3,), generator=generator).tolist()
        answer = torch.randint(10, 500, (2 + i % (MAX_NEW - 1),), generator=generator).tolist()
        ids.append(prompt + answer)
        labels.append([IGNORE_INDEX] * 3 + answer)
    batch = pad_batch(ids, labels, 0)
    batch["advantages"] = torch.tensor(advantages)
    return batch


def method(loss: str, **more: Any) -> MethodConfig:
    return JobConfig.model_validate(
        {"method": {"stage": "grpo", "loss": loss, "max_new_tokens": MAX_NEW, **more}}
    ).method


@pytest.mark.parametrize("loss", sorted(POLICY_SHAPES))
def test_terms_and_sum_give_the_aggregated_loss(model: Any, loss: str) -> None:
    """loss_sum / terms equals the loss written out from the per-token log-probs, as each paper aggregates it."""
    batch = answers([1.0, -0.5, 0.25, 2.0])
    objective = PolicyObjective(method(loss), None)
    got = objective.loss_sum(model, batch) / objective.terms(batch)
    logps = token_logps(model, batch)[0]
    mask = (batch["labels"][:, 1:] != IGNORE_INDEX).float()
    if loss == "rloo":  # one ratio per answer; each answer's loss once, averaged over answers
        seq = (logps * mask).sum(1, keepdim=True)
        want = clipped_policy_loss(seq, seq.detach(), batch["advantages"], 0.2, 0.2).per_token.mean()
    else:
        per_token = clipped_policy_loss(
            logps, logps.detach(), batch["advantages"], 0.2, method(loss).clip_high
        ).per_token
        want = {
            "grpo": ((per_token * mask).sum(1) / mask.sum(1)).mean(),
            "dr_grpo": (per_token * mask).sum() / (4 * MAX_NEW),
            "dapo": (per_token * mask).sum() / mask.sum(),
            "reinforce_pp": (per_token * mask).sum() / mask.sum(),
        }[loss]
    torch.testing.assert_close(got, want)


def test_micro_batches_add_up_to_the_whole_batch(model: Any) -> None:
    """Split over two micro-batches, the summed losses and terms give the loss of the whole batch."""
    objective = PolicyObjective(method("grpo"), None)
    whole = answers([1.0, -1.0, 0.5, -0.5])
    parts = [{key: value[rows] for key, value in whole.items()} for rows in (slice(0, 3), slice(3, 4))]
    total = sum(objective.loss_sum(model, part) for part in parts) / sum(objective.terms(p) for p in parts)
    torch.testing.assert_close(total, objective.loss_sum(model, whole) / objective.terms(whole))


def test_a_step_favours_answers_with_positive_advantage(model: Any) -> None:
    import copy

    policy = copy.deepcopy(model)
    batch = answers([1.0, -1.0, 1.0, -1.0], seed=3)
    objective = PolicyObjective(method("grpo"), None)
    before = token_logps(policy, batch)[0].sum(1).detach()
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        (objective.loss_sum(policy, batch) / objective.terms(batch)).backward()
        optimizer.step()
    change = token_logps(policy, batch)[0].sum(1).detach() - before
    assert (change[[0, 2]] > 0).all() and (change[[1, 3]] < 0).all(), change


def test_kl_to_the_reference_is_added_and_logged(model: Any) -> None:
    class Shifted:  # a reference 0.1 nat below the policy at every token
        def token_logps(self, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
            return token_logps(model, batch, temperature)[0].detach() - 0.1

    batch = answers([0.0, 0.0])
    objective = PolicyObjective(method("dapo", kl="k1", kl_coef=0.5), Shifted())  # type: ignore[arg-type]
    loss = objective.loss_sum(model, batch) / objective.terms(batch)
    torch.testing.assert_close(loss, torch.tensor(0.5 * 0.1))  # zero advantages: only beta x k1 remains
    kl_sum, count = objective.metrics()["kl"]
    assert count == objective.terms(batch) and kl_sum / count == pytest.approx(0.1, abs=1e-5)


def test_engine_log_probs_are_compared_with_the_policy(model: Any) -> None:
    batch = answers([1.0, -1.0])
    batch["rollout_logps"] = token_logps(model, batch)[0].detach() + 0.25 * (batch["labels"][:, 1:] != IGNORE_INDEX)
    objective = PolicyObjective(method("grpo"), None)
    objective.loss_sum(model, batch)
    gap, count = objective.metrics()["rollout/logprob_gap"]
    assert gap / count == pytest.approx(0.25, abs=1e-5)


def test_old_log_probs_make_the_ratio_clip() -> None:
    """With the generating policy's log-probs far below the current ones, positive advantages are clipped."""
    batch_logps = torch.zeros(2, 3)
    out = clipped_policy_loss(batch_logps, batch_logps - 1.0, torch.tensor([1.0, 1.0]), 0.2, 0.28)
    assert out.clipped_high.all()
