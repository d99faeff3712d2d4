"""Each preference and reward loss of ``raytune_ft.train.losses`` equals TRL's own code (the oracle)
on the same tensors: loss, gradient and the rewards TRL reports.

TRL 1.16 writes most losses inside its trainers' ``_compute_loss``; the oracles below build a bare
trainer (no model, no dataset) and feed it per-token log-probs whose sums are our sequence log-probs.
"""

from __future__ import annotations

import types
import warnings
from collections import defaultdict
from typing import Any

import pytest
import torch

from raytune_ft.train.losses import (
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    pairwise_reward_loss,
    simpo_loss,
)

BETA = 0.1


class _Accelerator:  # single process: gathers return their input
    device = torch.device("cpu")

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather


def bare(cls: type, **attrs: Any) -> Any:
    """A TRL trainer with only what its loss code reads."""
    trainer = object.__new__(cls)
    trainer.accelerator = _Accelerator()
    trainer.model = torch.nn.Module()  # only .training is read
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size, trainer.aux_loss_enabled = 0, 1, False
    for key, value in attrs.items():
        setattr(trainer, key, value)
    return trainer


def completions(seq_logps: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, Any]:
    """A completion mask with ``lengths`` tokens after one prompt token, and model outputs whose
    per-token log-probs sum to ``seq_logps`` (gradients flow back to it)."""
    rows, width = len(lengths), max(lengths) + 1
    mask = torch.zeros(rows, width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, 1 : 1 + n] = 1
    shifted = mask[:, 1:].to(seq_logps.dtype)
    per_token = shifted * (seq_logps / shifted.sum(1)).unsqueeze(1)
    zeros = torch.zeros(rows, width - 1)
    return mask, types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def trl_dpo(loss_type: str, pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor,
            lengths: tuple[list[int], list[int]]) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    from trl import DPOTrainer

    mask, out = completions(torch.cat([pc, pr]), lengths[0] + lengths[1])
    trainer = bare(
        DPOTrainer, beta=BETA, label_smoothing=0.0, loss_types=[loss_type], loss_weights=[1.0], ld_alpha=None,
        f_divergence_type="reverse_kl", precompute_ref_logps=True, use_weighting=False,
        args=types.SimpleNamespace(discopop_tau=0.05),
    )  # fmt: skip
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": rc, "ref_rejected_logps": rr}  # fmt: skip
    loss = trainer._compute_loss(lambda **_: out, inputs, return_outputs=False)
    return loss, {key: values[-1] for key, values in trainer._metrics["train"].items()}


@pytest.fixture
def pairs() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-(torch.rand(6, generator=g) * 30 + 1) for _ in range(4))
    return {"pc": pc.requires_grad_(True), "pr": pr, "rc": rc, "rr": rr,
            "lengths": ([3, 5, 2, 7, 4, 9], [4, 1, 6, 2, 8, 3])}  # fmt: skip


def same(ours: torch.Tensor, theirs: torch.Tensor, wrt: torch.Tensor) -> None:
    """Equal values and equal gradients with respect to ``wrt``."""
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    (ours_grad,) = torch.autograd.grad(ours, wrt, retain_graph=True)
    (their_grad,) = torch.autograd.grad(theirs, wrt, retain_graph=True)
    torch.testing.assert_close(ours_grad, their_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("loss_type", "ours"), [("sigmoid", dpo_loss), ("hinge", hinge_loss)])
def test_dpo_and_hinge_match_trl(pairs: dict[str, Any], loss_type: str, ours: Any) -> None:
    p = pairs
    out = ours(p["pc"], p["pr"], p["rc"], p["rr"], BETA)
    theirs, metrics = trl_dpo(loss_type, p["pc"], p["pr"], p["rc"], p["rr"], p["lengths"])
    same(out.losses.mean(), theirs, p["pc"])
    assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"], rel=1e-5)
    assert out.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"], rel=1e-5)


def test_ipo_on_length_averaged_logps_matches_trl(pairs: dict[str, Any]) -> None:
    p = pairs
    lc, lr = (torch.tensor(n, dtype=torch.float32) for n in p["lengths"])
    out = ipo_loss(p["pc"] / lc, p["pr"] / lr, p["rc"] / lc, p["rr"] / lr, BETA)
    theirs, _ = trl_dpo("ipo", p["pc"], p["pr"], p["rc"], p["rr"], p["lengths"])
    same(out.losses.mean(), theirs, p["pc"])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_conservative_dpo_matches_trl_sigmoid_on_log_ratios(pairs: dict[str, Any], label_smoothing: float) -> None:
    """TRL 1.16's DPO sigmoid dropped label smoothing; its CPO sigmoid keeps the cDPO form on whatever
    log-probs it is given, so it is the oracle on the log-ratios log pi - log ref."""
    from trl.experimental.cpo import CPOTrainer

    p = pairs
    out = dpo_loss(p["pc"], p["pr"], p["rc"], p["rr"], BETA, label_smoothing)
    cpo = bare(CPOTrainer, beta=BETA, label_smoothing=label_smoothing, loss_type="sigmoid", simpo_gamma=0.0, alpha=0.0)
    theirs, _, _ = cpo.cpo_loss(p["pc"] - p["rc"], p["pr"] - p["rr"])
    same(out.losses.mean(), theirs.mean(), p["pc"])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl_cpo(pairs: dict[str, Any], label_smoothing: float) -> None:
    from trl.experimental.cpo import CPOTrainer

    lc, lr = (torch.tensor(n, dtype=torch.float32) for n in pairs["lengths"])
    ac, ar = pairs["pc"] / lc, pairs["pr"] / lr
    out = simpo_loss(ac, ar, beta=2.0, gamma=0.5, label_smoothing=label_smoothing)
    cpo = bare(CPOTrainer, beta=2.0, label_smoothing=label_smoothing, loss_type="simpo", simpo_gamma=0.5, alpha=0.0)
    theirs, chosen_rewards, _ = cpo.cpo_loss(ac, ar)
    same(out.losses.mean(), theirs.mean(), pairs["pc"])
    torch.testing.assert_close(out.chosen_rewards, chosen_rewards)


def test_orpo_odds_ratio_matches_trl(pairs: dict[str, Any]) -> None:
    from trl.experimental.orpo import ORPOTrainer

    lc, lr = (torch.tensor(n, dtype=torch.float32) for n in pairs["lengths"])
    ac, ar = pairs["pc"] / lc / 10, pairs["pr"] / lr / 10  # average log-probs of likely answers
    out = orpo_loss(ac, ar, beta=0.1)
    ratio_term, chosen_rewards, _, _, _ = bare(ORPOTrainer, beta=0.1).odds_ratio_loss(ac, ar)
    same(out.losses.mean(), -ratio_term.mean(), pairs["pc"])  # TRL subtracts beta * log sigma(log odds)
    torch.testing.assert_close(out.chosen_rewards, chosen_rewards)


@pytest.mark.parametrize(("desirable_weight", "undesirable_weight"), [(1.0, 1.0), (1.0, 1.5)])
def test_kto_matches_trl(desirable_weight: float, undesirable_weight: float) -> None:
    from trl import KTOTrainer

    g = torch.Generator().manual_seed(1)
    logps, ref, kl_logps, ref_kl = (-(torch.rand(8, generator=g) * 20 + 1) for _ in range(4))
    logps.requires_grad_(True)
    labels = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    out = kto_loss(logps, ref, labels, (kl_logps - ref_kl).mean(), BETA, desirable_weight, undesirable_weight)

    mask, outputs = completions(logps, [1] * 8)
    trainer = bare(KTOTrainer, beta=BETA, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                   loss_type="kto", calculate_KL=True, precompute_ref_logps=True)  # fmt: skip
    trainer._compute_kl_logps = lambda model, batch: kl_logps
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "label": labels, "ref_logps": ref, "ref_KL_logps": ref_kl}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = trainer._compute_loss(lambda **_: outputs, inputs, return_outputs=False)
    same(out.losses.mean(), theirs, logps)


def test_kto_reference_point_is_clamped_at_zero() -> None:
    logps, ref, labels = torch.tensor([-5.0, -6.0]), torch.tensor([-5.5, -5.0]), torch.tensor([1, 0])
    assert torch.equal(kto_loss(logps, ref, labels, torch.tensor(-3.0), BETA).losses,
                       kto_loss(logps, ref, labels, torch.tensor(0.0), BETA).losses)  # fmt: skip


def test_pairwise_reward_loss_matches_trl_reward_trainer() -> None:
    from trl import RewardTrainer

    g = torch.Generator().manual_seed(2)
    chosen, rejected = torch.randn(5, generator=g).requires_grad_(True), torch.randn(5, generator=g)
    out = pairwise_reward_loss(chosen, rejected)
    trainer = bare(RewardTrainer, args=types.SimpleNamespace(center_rewards_coefficient=None))
    scores = torch.cat([chosen, rejected]).unsqueeze(-1)
    inputs = {"input_ids": torch.zeros(10, 3, dtype=torch.long), "attention_mask": torch.ones(10, 3)}
    theirs = trainer.compute_loss(lambda **_: types.SimpleNamespace(logits=scores), inputs)
    same(out.losses.mean(), theirs, chosen)
