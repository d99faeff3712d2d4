"""Training objectives: pure loss functions plus a tiny registry keyed by ``method.stage``.

An objective reports a *summed* loss and the number of terms in it, so the step core can
normalise exactly over a whole gradient-accumulation window instead of averaging averages.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F

from raytune_ft.data import IGNORE_INDEX

__all__ = ["OBJECTIVES", "Objective", "SFTObjective", "causal_lm_loss_sum", "learned_positions", "model_inputs"]


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL: L = -sum_t log p(x_t | x_<t) over unmasked t (Radford et al. 2018,
    eq. 1); ``labels`` are aligned with the inputs and shifted here."""
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Forward arguments: packed batches pass ``position_ids`` and no ``attention_mask``, so the
    model keeps attention inside each packed sample (see ``raytune_ft.data.packing``). No KV cache:
    training never reuses it, and transformers only detects packed rows when there is none."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


class Objective(Protocol):
    def terms(self, batch: dict[str, torch.Tensor]) -> int:
        """How many loss terms ``loss_sum`` will add up for this batch (known before the forward)."""
        ...

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The summed loss of one micro-batch."""
        ...


def learned_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t (in any row) whose next token is learned: the only logits the loss reads."""
    keep = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    return keep if keep.numel() else torch.zeros(1, dtype=torch.long, device=labels.device)


class SFTObjective:
    """Supervised fine-tuning: next-token loss on the unmasked (answer) tokens.

    The LM head runs only at positions whose next token is learned (``logits_to_keep``): with a
    49k vocabulary the head and its softmax are a large share of a small model's step, and prompt
    and padding positions need neither. The loss equals ``causal_lm_loss_sum`` on full logits.
    """

    def terms(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        keep = learned_positions(batch["labels"])
        logits = model(**model_inputs(batch), logits_to_keep=keep).logits  # (batch, len(keep), vocab)
        targets = batch["labels"][:, 1:][:, keep]
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )


OBJECTIVES: dict[str, type[Objective]] = {
    "sft": SFTObjective,
    "pt": SFTObjective,  # the same next-token loss; the data marks every token as learned
}
