"""Preference and reward losses as pure tensor functions, one per paper, each citing its equation.

Inputs are per-example sequence log-probabilities (summed over the answer tokens, or averaged where
the method says so; the objective decides) and outputs are per-example losses, unreduced, plus the
implicit rewards the method defines, so objectives can sum exactly over a gradient-accumulation
window and report rewards/margins. tests/unit/test_losses.py holds each equal to TRL's code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "PairLoss",
    "dpo_loss",
    "hinge_loss",
    "ipo_loss",
    "kto_loss",
    "orpo_loss",
    "pairwise_reward_loss",
    "simpo_loss",
]


class PairLoss(NamedTuple):
    losses: torch.Tensor
    """Per-example loss, shape (batch,)."""
    chosen_rewards: torch.Tensor
    """The method's implicit reward of each chosen (KTO: desirable) answer, detached."""
    rejected_rewards: torch.Tensor
    """The same for each rejected (KTO: undesirable) answer, detached."""


def _log_ratio_margin(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
) -> torch.Tensor:
    """h = (log pi(y_c|x) - log pi(y_r|x)) - (log ref(y_c|x) - log ref(y_r|x))."""
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def _rewards(
    beta: float, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """DPO's implicit reward r = beta * (log pi - log ref) (Rafailov et al. 2023, eq. 5)."""
    return (beta * (policy_chosen - ref_chosen)).detach(), (beta * (policy_rejected - ref_rejected)).detach()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> PairLoss:
    """Sigmoid DPO (Rafailov et al. 2023, eq. 7): L = -log sigma(beta * h), with the conservative
    label smoothing eps of cDPO (Mitchell 2023): L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)."""
    h = _log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    return PairLoss(losses, *_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> PairLoss:
    """IPO (Azar et al. 2023, eq. 17): L = (h - 1 / (2 beta))^2, on length-averaged log-probs."""
    h = _log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = (h - 1 / (2 * beta)) ** 2
    return PairLoss(losses, *_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def hinge_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> PairLoss:
    """SLiC's hinge on the DPO margin (Zhao et al. 2023, eq. 3; Liu et al. 2024 RSO, eq. 9):
    L = max(0, 1 - beta * h)."""
    h = _log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = torch.relu(1 - beta * h)
    return PairLoss(losses, *_rewards(beta, policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def simpo_loss(
    avg_chosen: torch.Tensor, avg_rejected: torch.Tensor, beta: float, gamma: float, label_smoothing: float = 0.0
) -> PairLoss:
    """SimPO (Meng et al. 2024, eq. 6), reference-free on length-averaged log-probs a:
    L = -log sigma(beta (a_c - a_r) - gamma), label-smoothed as in cDPO; the reward is beta * a."""
    z = beta * (avg_chosen - avg_rejected) - gamma
    losses = -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing
    return PairLoss(losses, (beta * avg_chosen).detach(), (beta * avg_rejected).detach())


def orpo_loss(avg_chosen: torch.Tensor, avg_rejected: torch.Tensor, beta: float) -> PairLoss:
    """ORPO's odds-ratio term (Hong et al. 2024, eqs. 4 and 7), reference-free on length-averaged
    log-probs a = log P: odds(y) = P / (1 - P), L_OR = -log sigma(log odds(y_c) - log odds(y_r)),
    weighted by lambda = ``beta``. ORPO adds the chosen answer's NLL (eq. 6); the objective does.
    The reward is beta * a, as TRL reports it."""
    log_odds = (avg_chosen - avg_rejected) - (
        torch.log1p(-torch.exp(avg_chosen)) - torch.log1p(-torch.exp(avg_rejected))
    )
    losses = -beta * F.logsigmoid(log_odds)
    return PairLoss(losses, (beta * avg_chosen).detach(), (beta * avg_rejected).detach())


def kto_loss(
    policy: torch.Tensor,
    ref: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> PairLoss:
    """KTO (Ethayarajh et al. 2024, eq. 8) on unpaired answers, r = log pi(y|x) - log ref(y|x):
    desirable: w_D (1 - sigma(beta (r - z0))), undesirable: w_U (1 - sigma(beta (z0 - r))), with the
    reference point z0 = max(0, KL estimate), detached. Rewards are beta * r for each kind (the
    other kind's entries are 0 in its reward tensor)."""
    z0 = kl.detach().clamp(min=0)
    r = policy - ref
    desirable = desirable.bool()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    rewards = (beta * r).detach()
    zero = torch.zeros_like(rewards)
    return PairLoss(losses, torch.where(desirable, rewards, zero), torch.where(desirable, zero, rewards))


def pairwise_reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> PairLoss:
    """Bradley-Terry reward-model loss (Ouyang et al. 2022, eq. 1; Touvron et al. 2023, eq. 1 for
    the margin m): L = -log sigma(r_c - r_r - m)."""
    diff = chosen - rejected - (margin if margin is not None else 0.0)
    return PairLoss(-F.logsigmoid(diff), chosen.detach(), rejected.detach())
