"""Preference, reward and online-RL losses as pure tensor functions, one per paper, each citing its equation.

Preference and reward losses take per-example sequence log-probabilities (summed over the answer tokens,
or averaged where the method says so; the objective decides) and return per-example losses, unreduced,
plus the implicit rewards the method defines, so objectives can sum exactly over a gradient-accumulation
window and report rewards/margins.

Online RL (PPO and the GRPO family) splits in three: an advantage estimator turns rewards into advantages
(per completion from grouped rewards, or per token by GAE), the clipped surrogate gives per-token losses,
and ``aggregate_policy_loss`` sums them with the method's weights. The weights take the whole update
batch's sequence and token counts, so workers and accumulation windows sum to the same loss as one batch.

tests/unit/test_losses.py and tests/unit/test_rl_losses.py hold each equal to TRL's code where TRL has
it, and to the paper's closed form where it does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "POLICY_AGGREGATIONS",
    "BatchMoments",
    "Moments",
    "PairLoss",
    "PolicyLoss",
    "adaptive_kl_coef",
    "aggregate_policy_loss",
    "clipped_policy_loss",
    "dpo_loss",
    "gae",
    "group_advantages",
    "hinge_loss",
    "ipo_loss",
    "kl_penalized_rewards",
    "kto_loss",
    "local_moments",
    "masked_whiten",
    "orpo_loss",
    "pairwise_reward_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "simpo_loss",
    "summed_moments",
    "token_kl",
    "update_moments",
    "value_loss",
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


# --- online RL: advantages -------------------------------------------------------------------------------

GROUP_EPS = 1e-4
"""Added to a standard deviation before dividing by it (TRL's value), so a group whose completions all
earned the same reward gets advantage 0 instead of 0 / 0."""


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Rewards (prompts x group_size,) laid out one group per row: completions of a prompt are adjacent."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} (at least 2 each)")
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: Literal["group", "batch", "none"] = "group"
) -> torch.Tensor:
    """GRPO's outcome advantage (Shao et al. 2024, DeepSeekMath, sec. 4.1.2): each completion's reward
    minus its group's mean, divided by the group's standard deviation, A_i = (r_i - mean(r)) / std(r).
    ``scale: batch`` divides by the whole batch's std instead; ``none`` is Dr. GRPO's unbiased form
    (Liu et al. 2025, arXiv:2503.20783), A_i = r_i - mean(r). Standard deviations are unbiased (Bessel), as TRL's."""
    grouped = _groups(rewards, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "none":
        return centred
    std = grouped.std(dim=1).repeat_interleave(group_size) if scale == "group" else rewards.std().expand_as(rewards)
    return centred / (std + GROUP_EPS)


BatchMoments = Callable[[torch.Tensor], tuple[float, float]]
"""Values -> (mean, unbiased std) over the whole batch they belong to (several workers' shares of it)."""


def local_moments(values: torch.Tensor) -> tuple[float, float]:
    """``BatchMoments`` of a batch held whole."""
    return float(values.mean()), float(values.std())


def summed_moments(count: float, total: float, squares: float, *, ddof: int = 1) -> tuple[float, float]:
    """Mean and std (unbiased with ``ddof`` 1, the population's with 0) from a batch's count, sum and sum of
    squares (added up over its shares)."""
    mean = total / count
    variance = (squares - count * mean**2) / max(count - ddof, 1.0)
    return mean, max(variance, 0.0) ** 0.5


def rloo_advantages(
    rewards: torch.Tensor, group_size: int, normalize: bool = False, moments: BatchMoments = local_moments
) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740, RLOO): each completion's
    reward minus the mean of the other k - 1 in its group, A_i = r_i - (sum_j r_j - r_i) / (k - 1).
    ``normalize`` then whitens them over the batch, (A - mean(A)) / std(A)."""
    grouped = _groups(rewards, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    advantages = (grouped - baseline).view(-1)
    if not normalize:
        return advantages
    mean, std = moments(advantages)
    return (advantages - mean) / (std + GROUP_EPS)


def reinforce_pp_advantages(
    rewards: torch.Tensor, group_size: int, moments: BatchMoments = local_moments
) -> torch.Tensor:
    """REINFORCE++ with a group baseline (Hu et al. 2025, arXiv:2501.03262): subtract the group's mean
    reward, then normalise over the whole batch, A = (A' - mean_batch(A')) / std_batch(A'), so no
    per-group std amplifies groups whose rewards barely differ. ``moments`` reads the batch's mean and std
    (all workers' answers: ``summed_moments`` of their all-reduced sums)."""
    centred = group_advantages(rewards, group_size, scale="none")
    mean, std = moments(centred)
    return (centred - mean) / (std + GROUP_EPS)


ADVANTAGE_ESTIMATORS: dict[str, Callable[[torch.Tensor, int, BatchMoments], torch.Tensor]] = {
    "grpo": lambda rewards, k, moments: group_advantages(rewards, k, "group"),
    "dapo": lambda rewards, k, moments: group_advantages(rewards, k, "group"),
    "dr_grpo": lambda rewards, k, moments: group_advantages(rewards, k, "none"),
    "rloo": lambda rewards, k, moments: rloo_advantages(rewards, k),
    "reinforce_pp": reinforce_pp_advantages,
}
"""Per-completion advantages from grouped rewards, by ``method.loss``; the batch-wide statistics they use
come from ``BatchMoments`` (the generated batch of every worker)."""


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) over each completion's tokens:
    delta_t = r_t + gamma V_{t+1} - V_t and A_t = delta_t + gamma lam A_{t+1}, with V = 0 after the last
    token. Returns (advantages, returns = A + V), both zero outside ``mask`` (right-padded rows)."""
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        following = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten ``x`` over the tokens in ``mask`` (PPO's advantage normalisation, Andrychowicz et al. 2021,
    sec. 3.4): (x - mean) / std with the unbiased std; ``shift_mean: false`` keeps the mean (reward whitening)."""
    mask = mask.to(x.dtype)
    count = mask.sum()
    mean = (x * mask).sum() / count
    var = (((x - mean) * mask) ** 2).sum() / (count - 1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def kl_penalized_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """PPO's per-token reward for RLHF (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022, eq. 2): -beta KL_t at
    every answer token, plus the answer's score r(x, y) at its last token. ``kl`` holds per-token KL estimates
    (``token_kl``), ``scores`` one reward per row, ``mask`` the answer tokens (a contiguous run per row)."""
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    last = (mask * torch.arange(1, mask.shape[1] + 1, device=mask.device)).argmax(dim=1)  # each row's last answer token
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


KL_HORIZON = 10_000
"""Answers over which the adaptive KL coefficient may change by about ``KL_STEP`` (TRL's ``horizon``)."""

KL_STEP = 0.2
"""The largest proportional error the adaptive KL controller acts on."""


def adaptive_kl_coef(coef: float, kl: float, target: float, answers: int, horizon: int = KL_HORIZON) -> float:
    """The adaptive KL coefficient after a batch (Ziegler et al. 2019, sec. 2.2): with the error
    e = clip(KL / KL_target - 1, -0.2, 0.2), beta <- beta (1 + e n / horizon), where KL is the batch's mean
    per-answer KL and n its number of answers."""
    error = min(max(kl / target - 1.0, -KL_STEP), KL_STEP)
    return coef * (1.0 + error * answers / horizon)


class Moments(NamedTuple):
    """Running mean, (biased) variance and count of every value seen so far."""

    mean: float = 0.0
    var: float = 0.0
    n: float = 0.0

    @property
    def std(self) -> float:
        """The unbiased standard deviation."""
        return (self.var * self.n / (self.n - 1)) ** 0.5 if self.n > 1 else 0.0


def update_moments(moments: Moments, mean: float, var: float, count: float) -> Moments:
    """``moments`` joined with a batch of ``count`` values of mean ``mean`` and biased variance ``var``
    (Chan, Golub and LeVeque 1979, the pairwise update): delta = mean_b - mean_a, n = n_a + n_b,
    mean = mean_a + delta n_b / n, M2 = M2_a + M2_b + delta^2 n_a n_b / n."""
    total = moments.n + count
    if total == 0:
        return moments
    delta = mean - moments.mean
    m2 = moments.var * moments.n + var * count + delta**2 * moments.n * count / total
    return Moments(moments.mean + delta * count / total, m2 / total, total)


# --- online RL: policy, KL and value losses --------------------------------------------------------------


class PolicyLoss(NamedTuple):
    per_token: torch.Tensor
    """-min(rho A, clip(rho) A) at each token (or each sequence, for sequence-level ratios)."""
    ratio: torch.Tensor
    """rho = pi / pi_old, detached."""
    clipped_low: torch.Tensor
    """Where rho < 1 - eps_low with A < 0: the update is held back (bool)."""
    clipped_high: torch.Tensor
    """Where rho > 1 + eps_high with A > 0 (bool)."""


def clipped_policy_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), L = -min(rho A, clip(rho, 1 - eps_low,
    1 + eps_high) A) with rho = exp(log pi - log pi_old); DAPO's clip-higher (Yu et al. 2025, arXiv:2503.14476)
    is ``eps_high > eps_low``. Advantages of shape (batch,) broadcast over tokens; sequence-level ratios
    (RLOO) pass (batch, 1) log-probs summed over each completion."""
    if advantages.dim() == 1 and logps.dim() == 2:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    low = (ratio < 1 - eps_low) & (advantages < 0)
    high = (ratio > 1 + eps_high) & (advantages > 0)
    return PolicyLoss(per_token, ratio.detach(), low.detach(), high.detach())


def token_kl(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: Literal["k1", "k2", "k3"]) -> torch.Tensor:
    """Per-token estimates of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating KL
    Divergence"), with log r = log pi_ref - log pi: k1 = -log r (unbiased, can be negative), k2 = (log r)^2 / 2,
    k3 = r - 1 - log r (unbiased and never negative; GRPO's, Shao et al. 2024, eq. 4)."""
    log_r = ref_logps - logps
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return log_r**2 / 2
    return torch.exp(log_r) - log_r - 1


KL_ESTIMATORS = ("k1", "k2", "k3")

POLICY_AGGREGATIONS = ("sequence_mean", "token_mean", "max_length")
"""How per-token losses sum to one loss. ``sequence_mean``: each completion's mean token loss, averaged
over completions (GRPO, Shao et al. 2024, eq. 3). ``token_mean``: every token of the batch weighs the same
(DAPO's token-level loss, Yu et al. 2025, arXiv:2503.14476). ``max_length``: the token sum over completions x the
generation limit, a constant, so no length bias (Dr. GRPO, Liu et al. 2025, arXiv:2503.20783)."""


def aggregate_policy_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    aggregation: Literal["sequence_mean", "token_mean", "max_length"],
    num_sequences: int | torch.Tensor,
    num_tokens: int | torch.Tensor,
    max_length: int,
) -> torch.Tensor:
    """This shard's share of the update batch's loss: its masked token losses, weighted by
    ``aggregation`` (POLICY_AGGREGATIONS). ``num_sequences`` and ``num_tokens`` count the whole update
    batch (every worker and micro-batch), so the shares of all shards sum to the loss of one batch."""
    mask = mask.to(per_token.dtype)
    masked = per_token * mask
    if aggregation == "sequence_mean":
        return (masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)).sum() / num_sequences
    if aggregation == "token_mean":
        return masked.sum() / num_tokens
    return masked.sum() / (num_sequences * max_length)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_range: float | None
) -> torch.Tensor:
    """PPO's value loss per token, 0.5 (V - R)^2, with the value clipping of the PPO baselines (Dhariwal et al.
    2017; studied by Andrychowicz et al. 2021, sec. 3.2): the larger of the plain and the clipped error,
    V_clip = V_old + clip(V - V_old, -eps, eps). ``clip_range: null`` leaves it plain."""
    error = (values - returns) ** 2
    if clip_range is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        error = torch.max(error, (clipped - returns) ** 2)
    return 0.5 * error
