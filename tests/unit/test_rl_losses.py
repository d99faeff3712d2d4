"""The online-RL losses and advantage estimators of ``raytune_ft.train.losses`` against TRL's own code.

TRL 1.16 writes GRPO's and RLOO's advantages inline in ``_generate_and_score_completions`` and their
losses in ``_compute_loss``. The losses run on a bare trainer (no model: its per-token log-prob function
returns ours). The advantage blocks are cut from TRL's source between two of its own lines and run on
our rewards, so a change in TRL fails here. GAE and the value loss have no TRL counterpart in 1.16
(its PPO trainer is gone); they are held to the paper's closed form.
"""

from __future__ import annotations

import inspect
import textwrap
import types
from typing import Any

import pytest
import torch

from raytune_ft.train.losses import (
    aggregate_policy_loss,
    clipped_policy_loss,
    gae,
    group_advantages,
    local_moments,
    masked_whiten,
    reinforce_pp_advantages,
    rloo_advantages,
    summed_moments,
    token_kl,
    value_loss,
)
from tests.unit.test_losses import bare

EPS_LOW, EPS_HIGH = 0.2, 0.28
MAX_LENGTH = 9


class _Accelerator:  # one process: gathers and reductions return their input
    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather

    def reduce(self, x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x


def trl_block(method: Any, first: str, last: str, **names: Any) -> dict[str, Any]:
    """Run the lines of TRL's ``method`` from the one starting with ``first`` through the one starting
    with ``last`` (dedented to the first line's indentation) with ``names`` bound; return its variables."""
    lines = inspect.getsource(method).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith(last))
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = [line[indent:] if line.strip() else "" for line in lines[start : end + 1]]
    scope = {"torch": torch, **vars(inspect.getmodule(method)), **names}
    exec(compile(textwrap.dedent("\n".join(body)), f"<{method.__qualname__}>", "exec"), scope)
    return scope


@pytest.fixture
def rollout() -> dict[str, Any]:
    """Six completions of ragged lengths: two prompts x a group of 3 (or three x 2)."""
    g = torch.Generator().manual_seed(0)
    lengths = [3, 9, 5, 1, 7, 4]
    mask = torch.zeros(6, MAX_LENGTH, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    old = -torch.rand(6, MAX_LENGTH, generator=g) * 3
    logps = (old + torch.randn(6, MAX_LENGTH, generator=g) * 0.3).requires_grad_(True)
    return {
        "mask": mask,
        "old": old,
        "ref": old + torch.randn(6, MAX_LENGTH, generator=g) * 0.2,
        "logps": logps,
        "advantages": torch.randn(6, generator=g),
        "rewards": torch.tensor([1.0, 0.0, 1.0, 0.5, 0.5, 2.0]),
    }


def trl_grpo_loss(loss_type: str, beta: float, r: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    from trl import GRPOTrainer

    entropies = torch.zeros_like(r["old"])
    trainer = bare(
        GRPOTrainer, loss_type=loss_type, beta=beta, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", use_vllm=False,
        vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1,
        max_completion_length=MAX_LENGTH, accelerator=_Accelerator(),
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        _get_per_token_logps_and_entropies=lambda *_, **__: (r["logps"], entropies, None),
    )  # fmt: skip
    prompt = torch.zeros(6, 2, dtype=torch.long)
    inputs = {
        "prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": torch.zeros_like(r["mask"]),
        "completion_mask": r["mask"], "advantages": r["advantages"], "old_per_token_logps": r["old"],
        "ref_per_token_logps": r["ref"], "num_items_in_batch": r["mask"].sum(),
    }  # fmt: skip
    loss = trainer._compute_loss(None, inputs)
    return loss, {key: values[-1] for key, values in trainer._metrics["train"].items()}


def ours(aggregation: str, beta: float, r: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    out = clipped_policy_loss(r["logps"], r["old"], r["advantages"], EPS_LOW, EPS_HIGH)
    per_token = out.per_token + beta * token_kl(r["logps"], r["ref"], "k3") if beta else out.per_token
    loss = aggregate_policy_loss(per_token, r["mask"], aggregation, 6, r["mask"].sum(), MAX_LENGTH)  # type: ignore[arg-type]
    return loss, out


def same(a: torch.Tensor, b: torch.Tensor, wrt: torch.Tensor) -> None:
    """Equal values and equal gradients with respect to ``wrt``."""
    assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-7)
    (ga,) = torch.autograd.grad(a, wrt, retain_graph=True)
    (gb,) = torch.autograd.grad(b, wrt, retain_graph=True)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("loss_type", "aggregation"),
    [("grpo", "sequence_mean"), ("bnpo", "token_mean"), ("dapo", "token_mean"), ("dr_grpo", "max_length")],
)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_family_losses_match_trl(rollout: dict[str, Any], loss_type: str, aggregation: str, beta: float) -> None:
    theirs, metrics = trl_grpo_loss(loss_type, beta, rollout)
    loss, out = ours(aggregation, beta, rollout)
    same(loss, theirs, rollout["logps"])
    mask = rollout["mask"].bool()
    assert out.clipped_low[mask].float().mean().item() == pytest.approx(metrics["clip_ratio/low_mean"])
    assert out.clipped_high[mask].float().mean().item() == pytest.approx(metrics["clip_ratio/high_mean"])
    assert metrics["clip_ratio/region_mean"] > 0  # the fixture exercises the clip on both sides
    if beta:
        kl = token_kl(rollout["logps"], rollout["ref"], "k3")[mask].mean().item()
        assert kl == pytest.approx(metrics["kl"], rel=1e-5)


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "max_length"])
def test_shards_of_a_batch_sum_to_the_whole_batch_loss(rollout: dict[str, Any], aggregation: str) -> None:
    """Two workers (or micro-batches) holding rows 0-3 and 4-5 add up to the loss of all six rows."""
    per_token = clipped_policy_loss(rollout["logps"], rollout["old"], rollout["advantages"], EPS_LOW, EPS_HIGH)
    mask, tokens = rollout["mask"], rollout["mask"].sum()
    whole = aggregate_policy_loss(per_token.per_token, mask, aggregation, 6, tokens, MAX_LENGTH)  # type: ignore[arg-type]
    parts = torch.stack([
        aggregate_policy_loss(per_token.per_token[rows], mask[rows], aggregation, 6, tokens, MAX_LENGTH)  # type: ignore[arg-type]
        for rows in (slice(0, 4), slice(4, 6))
    ]).sum()  # fmt: skip
    torch.testing.assert_close(parts, whole)


def test_rloo_sequence_level_loss_matches_trl(rollout: dict[str, Any]) -> None:
    from trl import RLOOTrainer

    r = rollout
    mask = r["mask"].float()
    trainer = bare(
        RLOOTrainer, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, accelerator=_Accelerator(),
        _get_per_token_logps_and_entropies=lambda *_, **__: (r["logps"], torch.zeros_like(r["old"]), None),
    )  # fmt: skip
    prompt = torch.zeros(6, 2, dtype=torch.long)
    old_seq = (r["old"] * mask).sum(1)
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "old_logps": old_seq,
              "completion_ids": torch.zeros_like(r["mask"]), "completion_mask": r["mask"],
              "advantages": r["advantages"] * 0.05}  # fmt: skip
    theirs = trainer._compute_loss(None, inputs)
    seq = (r["logps"] * mask).sum(1, keepdim=True)
    out = clipped_policy_loss(seq, old_seq.unsqueeze(1), r["advantages"] * 0.05, EPS_LOW, EPS_HIGH)
    same(out.per_token.mean(), theirs, r["logps"])


def trl_grpo_advantages(rewards: torch.Tensor, k: int, scale: str) -> torch.Tensor:
    from trl import GRPOTrainer

    trainer = types.SimpleNamespace(multi_objective_aggregation="sum_then_normalize", scale_rewards=scale,
                                    reward_weights=torch.ones(1))  # fmt: skip
    scope = trl_block(
        GRPOTrainer._generate_and_score_completions,
        'if self.multi_objective_aggregation == "sum_then_normalize":',
        "advantages = torch.nan_to_num(advantages, nan=0.0)",
        self=trainer, rewards_per_func=rewards.unsqueeze(1), num_generations=k, device="cpu",
        unscorable_mask=torch.zeros_like(rewards, dtype=torch.bool),
    )  # fmt: skip
    advantages: torch.Tensor = scope["advantages"]
    return advantages


@pytest.mark.parametrize(("scale", "ours_of"), [
    ("group", lambda r, k: group_advantages(r, k, "group")),
    ("batch", lambda r, k: group_advantages(r, k, "batch")),
    ("none", lambda r, k: group_advantages(r, k, "none")),
])  # fmt: skip
def test_group_advantages_match_trl(rollout: dict[str, Any], scale: str, ours_of: Any) -> None:
    rewards = rollout["rewards"]
    torch.testing.assert_close(ours_of(rewards, 3), trl_grpo_advantages(rewards, 3, scale))
    torch.testing.assert_close(ours_of(rewards, 2), trl_grpo_advantages(rewards, 2, scale))


def test_a_group_whose_rewards_tie_gets_no_advantage() -> None:
    advantages = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]), 3)
    assert advantages[:3].abs().max().item() == 0.0
    assert advantages[3:].abs().min().item() > 0.5


@pytest.mark.parametrize("normalize", [False, True])
def test_rloo_advantages_match_trl(rollout: dict[str, Any], normalize: bool) -> None:
    from trl import RLOOTrainer

    rewards = rollout["rewards"]
    scope = trl_block(
        RLOOTrainer._generate_and_score_completions,
        "grouped_rewards = rewards.view(-1, num_generations)",
        "advantages = torch.nan_to_num(advantages, nan=0.0)",
        self=types.SimpleNamespace(normalize_advantages=normalize), rewards=rewards.clone(), num_generations=3,
    )  # fmt: skip
    torch.testing.assert_close(rloo_advantages(rewards, 3, normalize), scope["advantages"])


def test_reinforce_pp_centres_per_group_then_whitens_over_the_batch(rollout: dict[str, Any]) -> None:
    rewards = rollout["rewards"]
    a = reinforce_pp_advantages(rewards, 3)
    by_hand = rewards - rewards.view(2, 3).mean(1).repeat_interleave(3)
    torch.testing.assert_close(a, (by_hand - by_hand.mean()) / (by_hand.std() + 1e-4))
    assert a.mean().abs().item() < 1e-6 and a.std().item() == pytest.approx(1.0, abs=1e-3)


def test_batch_statistics_span_every_workers_share(rollout: dict[str, Any]) -> None:
    """Two workers, one group each: with the moments of their summed shares (what each worker's all-reduce
    returns), each worker's REINFORCE++ advantages are its part of the whole batch's."""
    rewards = rollout["rewards"]
    shares = rewards.view(2, 3)
    centred = [group_advantages(share, 3, scale="none") for share in shares]
    sums = [float(sum(c.numel() for c in centred)), sum(float(c.sum()) for c in centred)]
    sums.append(sum(float((c.double() ** 2).sum()) for c in centred))
    moments = summed_moments(*sums)
    assert moments == pytest.approx(local_moments(torch.cat(centred)), abs=1e-6)
    parts = [reinforce_pp_advantages(share, 3, lambda _: moments) for share in shares]
    torch.testing.assert_close(torch.cat(parts), reinforce_pp_advantages(rewards, 3))
    assert not torch.allclose(reinforce_pp_advantages(shares[0], 3), parts[0]), "a share whitened alone differs"


def test_groups_must_divide_the_batch() -> None:
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)


def test_kl_estimators() -> None:
    """k1 and k3 are unbiased for KL(pi || ref) over samples of pi; k3 is never negative."""
    g = torch.Generator().manual_seed(1)
    pi, ref = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3])
    samples = torch.multinomial(pi, 200_000, replacement=True, generator=g)
    logps, ref_logps = pi.log()[samples], ref.log()[samples]
    exact = (pi * (pi / ref).log()).sum().item()
    for estimator in ("k1", "k3"):
        assert token_kl(logps, ref_logps, estimator).mean().item() == pytest.approx(exact, rel=0.03)
    assert token_kl(logps, ref_logps, "k3").min().item() >= 0
    assert token_kl(logps, ref_logps, "k2").mean().item() == pytest.approx(
        0.5 * ((pi / ref).log() ** 2 * pi).sum().item(), rel=0.03
    )


def test_gae_equals_its_closed_form() -> None:
    """A_t = sum_l (gamma lam)^l delta_{t+l} over the completion's own tokens (Schulman et al. 2016, eq. 16)."""
    g = torch.Generator().manual_seed(2)
    rewards, values = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected = torch.zeros(3, 6)
    for row in range(3):
        n = int(mask[row].sum())
        v = torch.cat([values[row, :n], torch.zeros(1)])
        deltas = [rewards[row, t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            expected[row, t] = sum((gamma * lam) ** i * deltas[t + i] for i in range(n - t))
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, (expected + values) * mask)
    # lam = 1, gamma = 1: the advantage is the reward-to-go minus the value
    advantages, _ = gae(rewards, values, mask, 1.0, 1.0)
    to_go = (rewards * mask).flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(advantages, (to_go - values) * mask)


def test_value_clipping_keeps_the_larger_error() -> None:
    old, returns = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, -1.0, 0.05])
    values = torch.tensor([0.5, 0.5, 0.1], requires_grad=True)
    loss = value_loss(values, old, returns, clip_range=0.2)
    # clipped values: 0.2, 0.2, 0.1 -> errors (0.64 vs 0.25), (1.44 vs 2.25), (0.0025 vs 0.0025)
    torch.testing.assert_close(loss, 0.5 * torch.tensor([0.64, 2.25, 0.0025]))
    (grad,) = torch.autograd.grad(loss.sum(), values)
    assert grad[0].item() == 0.0  # held at the clip: no gradient pushes it further from old
    torch.testing.assert_close(value_loss(values, old, returns, None), 0.5 * (values - returns) ** 2)


def test_masked_whiten_ignores_padding() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, -7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    w = masked_whiten(x, mask)
    kept = w[mask.bool()]
    assert kept.mean().abs().item() < 1e-6 and kept.std().item() == pytest.approx(1.0, abs=1e-4)
    assert w[~mask.bool()].abs().max().item() == 0.0
    assert masked_whiten(x, mask, shift_mean=False)[mask.bool()].mean().item() == pytest.approx(3.0, abs=1e-5)
