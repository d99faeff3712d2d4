"""Training objectives: one class per ``method.stage`` in a tiny registry, over the pure losses of
``losses.py``.

An objective reports a *summed* loss and the number of terms in it, so the step core can
normalise exactly over a whole gradient-accumulation window instead of averaging averages. Its
metrics (rewards, margins, accuracy) come the same way: sums and counts, averaged once per logging
window over every worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from raytune_ft.config import MethodConfig
from raytune_ft.data import IGNORE_INDEX

from .fused_loss import chunked_linear_cross_entropy, hidden_states_instead_of_logits
from .losses import (
    PairLoss,
    clipped_policy_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    pairwise_reward_loss,
    simpo_loss,
    token_kl,
    value_loss,
)
from .reference import Reference, policy_outputs, sequence_logps, token_logps

__all__ = [
    "OBJECTIVES",
    "POLICY_SHAPES",
    "KTOObjective",
    "MetricSums",
    "Objective",
    "PPOObjective",
    "PolicyObjective",
    "PreferenceObjective",
    "RewardObjective",
    "SFTObjective",
    "add_metric_sums",
    "causal_lm_loss_sum",
    "learned_positions",
    "model_inputs",
]

MetricSums = dict[str, tuple[float, float]]
"""Metric name -> (sum, count) since the last ``metrics()`` call; the mean is sum / count."""


def add_metric_sums(into: MetricSums, more: MetricSums) -> None:
    """Add ``more``'s sums and counts to ``into``'s, name by name."""
    for name, (total, count) in more.items():
        old_total, old_count = into.get(name, (0.0, 0.0))
        into[name] = (old_total + total, old_count + count)


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL: L = -sum_t log p(x_t | x_<t) over unmasked t (Radford et al. 2018,
    eq. 1); ``labels`` are aligned with the inputs and shifted here."""
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")


IMAGE_INPUTS = ("pixel_values", "image_grid_thw", "image_sizes", "mm_token_type_ids", "token_type_ids")
"""A vision-language model's forward inputs beside the tokens, passed on where a batch holds them."""


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Forward arguments: packed batches pass ``position_ids`` and no ``attention_mask``, so the
    model keeps attention inside each packed sample (see ``raytune_ft.data.packing``). No KV cache:
    training never reuses it, and transformers only detects packed rows when there is none. Image arrays
    (``IMAGE_INPUTS``) go along."""
    images = {key: batch[key] for key in IMAGE_INPUTS if key in batch}
    if "position_ids" in batch:
        if images:
            raise ValueError("packed rows cannot carry images: their features would land in other samples")
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False, **images}


class Objective(Protocol):
    def terms(self, batch: dict[str, torch.Tensor]) -> int:
        """How many loss terms ``loss_sum`` will add up for this batch (known before the forward)."""
        ...

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The summed loss of one micro-batch."""
        ...

    def metrics(self) -> MetricSums:
        """Sums and counts of the objective's own metrics since the last call (then reset)."""
        ...


def learned_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t (in any row) whose next token is learned: the only logits the loss reads."""
    keep = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    return keep if keep.numel() else torch.zeros(1, dtype=torch.long, device=labels.device)


class SFTObjective:
    """Supervised fine-tuning: next-token loss on the unmasked (answer) tokens.

    The LM head runs only at positions whose next token is learned (``logits_to_keep``): with a
    49k vocabulary the head and its softmax are a large share of a small model's step, and prompt
    and padding positions need neither. Where the head is a plain linear layer held whole, it runs
    with the loss in chunks (``fused_loss``), so those positions' logits are never held at once. The
    loss equals ``causal_lm_loss_sum`` on full logits.
    """

    def terms(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        keep = learned_positions(batch["labels"])
        targets = batch["labels"][:, 1:][:, keep].reshape(-1)
        with hidden_states_instead_of_logits(model) as head:
            out = model(**model_inputs(batch), logits_to_keep=keep).logits  # (batch, len(keep), hidden or vocab)
        if head is not None:  # the head and the loss in chunks: the logits are never held whole
            return chunked_linear_cross_entropy(out.reshape(-1, out.size(-1)), head.weight, targets, IGNORE_INDEX)
        return F.cross_entropy(
            out.reshape(-1, out.size(-1)).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum"
        )

    def metrics(self) -> MetricSums:
        return {}


class _Tally:
    """Running (sum, count) per metric name. The names are fixed up front, so every worker reports
    the same keys in the same order (they are all-reduced as one list)."""

    def __init__(self, *names: str) -> None:
        self.names = names
        self.sums: MetricSums = dict.fromkeys(names, (0.0, 0.0))

    def add(self, name: str, values: torch.Tensor) -> None:
        total, count = self.sums[name]
        self.sums[name] = (total + float(values.detach().float().sum()), count + values.numel())

    def pop(self) -> MetricSums:
        sums, self.sums = self.sums, dict.fromkeys(self.names, (0.0, 0.0))
        return sums


PairLossFn = Callable[[MethodConfig, torch.Tensor, torch.Tensor, torch.Tensor | None], PairLoss]
"""(method config, summed policy log-probs, answer lengths, summed reference log-probs or None) ->
per-pair losses; each tensor holds the chosen rows, then the rejected ones."""


def _halves(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    chosen, rejected = values.chunk(2)
    return chosen, rejected


def _need(reference_logps: torch.Tensor | None) -> torch.Tensor:
    if reference_logps is None:
        raise RuntimeError("this loss needs reference log-probs, but no reference was built")
    return reference_logps


def _sigmoid(c: MethodConfig, policy: torch.Tensor, lengths: torch.Tensor, ref: torch.Tensor | None) -> PairLoss:
    return dpo_loss(*_halves(policy), *_halves(_need(ref)), c.beta, c.label_smoothing)


def _ipo(c: MethodConfig, policy: torch.Tensor, lengths: torch.Tensor, ref: torch.Tensor | None) -> PairLoss:
    return ipo_loss(*_halves(policy / lengths), *_halves(_need(ref) / lengths), c.beta)


def _hinge(c: MethodConfig, policy: torch.Tensor, lengths: torch.Tensor, ref: torch.Tensor | None) -> PairLoss:
    return hinge_loss(*_halves(policy), *_halves(_need(ref)), c.beta)


def _simpo(c: MethodConfig, policy: torch.Tensor, lengths: torch.Tensor, ref: torch.Tensor | None) -> PairLoss:
    return simpo_loss(*_halves(policy / lengths), c.beta, c.simpo_gamma, c.label_smoothing)


def _orpo(c: MethodConfig, policy: torch.Tensor, lengths: torch.Tensor, ref: torch.Tensor | None) -> PairLoss:
    return orpo_loss(*_halves(policy / lengths), c.beta)


PAIR_LOSSES: dict[str, PairLossFn] = {"sigmoid": _sigmoid, "ipo": _ipo, "hinge": _hinge, "simpo": _simpo, "orpo": _orpo}
"""``method.loss`` -> its loss; ipo, simpo and orpo use length-averaged log-probs, as their papers do."""


_REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def _half(batch: dict[str, torch.Tensor]) -> int:
    """Rows in each half of a stacked batch (chosen then rejected, or answers then mismatched ones)."""
    return int(batch["input_ids"].shape[0] // 2)


def _add_pair_rewards(tally: _Tally, out: PairLoss) -> None:
    tally.add("rewards/chosen", out.chosen_rewards)
    tally.add("rewards/rejected", out.rejected_rewards)
    tally.add("rewards/margins", out.chosen_rewards - out.rejected_rewards)
    tally.add("rewards/accuracies", (out.chosen_rewards > out.rejected_rewards).float())


class PreferenceObjective:
    """DPO and its variants on pairs: the batch holds every chosen row, then every rejected row.

    One forward scores both halves. ORPO adds its own SFT term (the chosen answer's length-averaged
    NLL, Hong et al. 2024, eq. 6); ``ftx`` adds the same term with weight ftx to any loss.
    """

    def __init__(self, cfg: MethodConfig, reference: Reference | None) -> None:
        self.cfg, self.reference = cfg, reference
        self.tally = _Tally(*_REWARD_METRICS, "logps/chosen", "logps/rejected")

    def terms(self, batch: dict[str, torch.Tensor]) -> int:
        return _half(batch)

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        policy_sum, counts = sequence_logps(model, batch)
        lengths = counts.clamp(min=1)
        ref = self.reference.logps(batch) if self.reference is not None else None
        out = PAIR_LOSSES[self.cfg.loss](self.cfg, policy_sum, lengths, ref)
        chosen_nll = -_halves(policy_sum / lengths)[0]
        losses = out.losses + (chosen_nll if self.cfg.loss == "orpo" else 0.0) + self.cfg.ftx * chosen_nll
        self._record(out, policy_sum)
        return losses.sum()

    def _record(self, out: PairLoss, policy_sum: torch.Tensor) -> None:
        chosen, rejected = policy_sum.detach().chunk(2)
        _add_pair_rewards(self.tally, out)
        self.tally.add("logps/chosen", chosen)
        self.tally.add("logps/rejected", rejected)

    def metrics(self) -> MetricSums:
        return self.tally.pop()


class KTOObjective:
    """KTO on labelled answers: the batch holds every answer, then every row's mismatched answer
    (its prompt with another row's answer), from which the KL reference point is estimated.

    The KL term is detached (Ethayarajh et al. 2024, sec. 4.1), so the mismatched half runs without
    gradients; it is estimated per micro-batch (TRL averages it over all processes' batches).
    """

    def __init__(self, cfg: MethodConfig, reference: Reference | None) -> None:
        self.cfg, self.reference = cfg, reference
        self.tally = _Tally("rewards/chosen", "rewards/rejected", "kl")

    def terms(self, batch: dict[str, torch.Tensor]) -> int:
        return _half(batch)

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        n = self.terms(batch)
        answers, mismatched = _rows(batch, slice(0, n)), _rows(batch, slice(n, 2 * n))
        policy, _ = sequence_logps(model, answers)
        with torch.no_grad():
            policy_kl, _ = sequence_logps(model, mismatched)
        ref = _need(self.reference.logps(batch) if self.reference is not None else None)
        kl = (policy_kl - ref[n:]).mean()
        c = self.cfg
        out = kto_loss(
            policy, ref[:n], batch["kto_label"], kl, c.beta, c.kto_desirable_weight, c.kto_undesirable_weight
        )
        desirable = batch["kto_label"].bool()
        self.tally.add("rewards/chosen", out.chosen_rewards[desirable])
        self.tally.add("rewards/rejected", out.rejected_rewards[~desirable])
        self.tally.add("kl", kl.detach().reshape(1))
        return out.losses.sum()

    def metrics(self) -> MetricSums:
        return self.tally.pop()


class RewardObjective:
    """Reward modelling on pairs (chosen rows, then rejected rows): the value-head model scores each
    row and the pairwise Bradley-Terry loss ranks chosen above rejected."""

    def __init__(self, cfg: MethodConfig, reference: Reference | None) -> None:
        self.tally = _Tally(*_REWARD_METRICS)

    def terms(self, batch: dict[str, torch.Tensor]) -> int:
        return _half(batch)

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        out = pairwise_reward_loss(*_halves(scores))
        _add_pair_rewards(self.tally, out)
        return out.losses.sum()

    def metrics(self) -> MetricSums:
        return self.tally.pop()


def _rows(batch: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """The model inputs of some rows of a padded batch."""
    return {key: batch[key][rows] for key in ("input_ids", "attention_mask", "labels")}


POLICY_SHAPES: dict[str, tuple[str, str]] = {
    "grpo": ("token", "sequence_mean"),
    "dr_grpo": ("token", "max_length"),
    "dapo": ("token", "token_mean"),
    "rloo": ("sequence", "sequence_mean"),
    "reinforce_pp": ("token", "token_mean"),
}
"""``method.loss`` of ``stage: grpo`` -> (ratio level, aggregation), as TRL's GRPOTrainer (``loss_type``
grpo, dr_grpo, dapo) and RLOOTrainer (a ratio of whole answers) compute them. Aggregations are those of
``losses.POLICY_AGGREGATIONS``."""


class PolicyObjective:
    """The GRPO family on generated answers: each row is a prompt and one answer (``labels`` mark the
    answer), with its ``advantages`` and, when the batch was generated by an earlier policy than the one
    trained (``method.ppo_epochs`` > 1), the generating policy's per-token ``old_logps``.

    The loss is PPO's clipped surrogate (``losses.clipped_policy_loss``) plus beta x the per-token KL to
    the reference (``losses.token_kl``). ``terms`` counts what the aggregation divides by (answers, answer
    tokens, or answers x ``max_new_tokens``), so the step core's division by the global count gives the
    aggregated loss of the whole generated batch over all workers and micro-batches.
    """

    def __init__(self, cfg: MethodConfig, reference: Reference | None) -> None:
        self.cfg, self.reference = cfg, reference
        self.level, self.aggregation = POLICY_SHAPES[cfg.loss]
        kl = ("kl",) if reference is not None and cfg.kl != "none" else ()
        self.tally = _Tally(*kl, "clip_ratio/low", "clip_ratio/high", "entropy", "rollout/logprob_gap")

    def terms(self, batch: dict[str, torch.Tensor]) -> int:
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        if self.aggregation == "token_mean":
            return int(mask.sum())
        answers = int(mask.any(dim=1).sum())
        return answers * (self.cfg.max_new_tokens if self.aggregation == "max_length" else 1)

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = (batch["labels"][:, 1:] != IGNORE_INDEX).float()
        logps, entropy = token_logps(model, batch, self.cfg.temperature, entropy=True)
        old = batch["old_logps"] if "old_logps" in batch else logps.detach()
        advantages = batch["advantages"]
        if self.level == "sequence":
            out = clipped_policy_loss(
                (logps * mask).sum(1, keepdim=True), (old * mask).sum(1, keepdim=True), advantages,
                self.cfg.epsilon, self.cfg.clip_high,
            )  # fmt: skip
            per_token = out.per_token.expand_as(mask)  # every token carries its answer's loss; the mean keeps it
        else:
            out = clipped_policy_loss(logps, old, advantages, self.cfg.epsilon, self.cfg.clip_high)
            per_token = out.per_token
        if self.reference is not None and self.cfg.kl != "none":
            kl = token_kl(logps, self.reference.token_logps(batch, self.cfg.temperature), self.cfg.kl)  # type: ignore[arg-type]
            per_token = per_token + self.cfg.kl_coef * kl
            self.tally.add("kl", kl.detach()[mask.bool()])
        self._record(out.clipped_low, out.clipped_high, entropy, mask)
        if "rollout_logps" in batch:  # how far the engine's log-probs are from the trained policy's (sync health)
            self.tally.add("rollout/logprob_gap", (logps.detach() - batch["rollout_logps"]).abs()[mask.bool()])
        masked = per_token * mask
        if self.aggregation == "sequence_mean":
            return (masked.sum(1) / mask.sum(1).clamp(min=1.0)).sum()
        return masked.sum()

    def _record(self, low: torch.Tensor, high: torch.Tensor, entropy: torch.Tensor | None, mask: torch.Tensor) -> None:
        where = mask.bool()
        if low.shape != mask.shape:  # sequence-level ratios: one flag per answer
            where = torch.ones_like(low, dtype=torch.bool)
        self.tally.add("clip_ratio/low", low[where].float())
        self.tally.add("clip_ratio/high", high[where].float())
        if entropy is not None:
            self.tally.add("entropy", entropy.detach()[mask.bool()])

    def metrics(self) -> MetricSums:
        return self.tally.pop()


class PPOObjective:
    """PPO with a critic on generated answers (Schulman et al. 2017, eq. 9 without the entropy bonus; as
    TRL's PPO trainer): each row is a prompt and one answer with per-token ``advantages`` (GAE, whitened),
    ``returns``, and the generating policy's ``old_logps`` and critic's ``old_values``, all in the layout
    of ``token_logps``. The model is the policy with a value head (``values`` beside its logits).

    Per answer token: the clipped surrogate plus ``vf_coef`` x the (clipped) value loss; every token of the
    mini-batch weighs the same. The KL to the reference is already in the rewards the advantages came from.
    """

    def __init__(self, cfg: MethodConfig, reference: Reference | None) -> None:
        self.cfg = cfg  # the feed scores the KL of the rewards with the reference (``StepCore.reference``)
        self.tally = _Tally(
            "clip_ratio/low", "clip_ratio/high", "entropy", "rollout/logprob_gap", "value_loss", "value_clip_ratio",
            "values",
        )  # fmt: skip

    def terms(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        logps, entropy, out = policy_outputs(model, batch, self.cfg.temperature, entropy=True)
        values = out["values"][:, :-1]  # the value of the answer so far, where the next token is predicted
        policy = clipped_policy_loss(logps, batch["old_logps"], batch["advantages"], self.cfg.epsilon,
                                     self.cfg.clip_high)  # fmt: skip
        critic = value_loss(values, batch["old_values"], batch["returns"], self.cfg.value_clip)
        per_token = policy.per_token + self.cfg.vf_coef * critic
        self._record(policy.clipped_low, policy.clipped_high, entropy, values, critic, batch, logps, mask)
        return (per_token * mask).sum()

    def _record(
        self, low: torch.Tensor, high: torch.Tensor, entropy: torch.Tensor | None, values: torch.Tensor,
        critic: torch.Tensor, batch: dict[str, torch.Tensor], logps: torch.Tensor, mask: torch.Tensor,
    ) -> None:  # fmt: skip
        self.tally.add("clip_ratio/low", low[mask].float())
        self.tally.add("clip_ratio/high", high[mask].float())
        if entropy is not None:
            self.tally.add("entropy", entropy[mask])
        self.tally.add("value_loss", critic.detach()[mask])
        self.tally.add("values", values.detach()[mask])
        if self.cfg.value_clip is not None:
            moved = (values.detach() - batch["old_values"]).abs() > self.cfg.value_clip
            self.tally.add("value_clip_ratio", moved[mask].float())
        if "rollout_logps" in batch:
            self.tally.add("rollout/logprob_gap", (logps.detach() - batch["rollout_logps"]).abs()[mask])

    def metrics(self) -> MetricSums:
        return self.tally.pop()


ObjectiveFactory = Callable[[MethodConfig, "Reference | None"], Objective]

OBJECTIVES: dict[str, ObjectiveFactory] = {
    "sft": lambda cfg, reference: SFTObjective(),
    "pt": lambda cfg, reference: SFTObjective(),  # the same next-token loss; the data marks every token as learned
    "rm": RewardObjective,
    "dpo": PreferenceObjective,
    "kto": KTOObjective,
    "grpo": PolicyObjective,
    "ppo": PPOObjective,
}
