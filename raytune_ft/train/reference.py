"""The reference model of DPO and KTO: where log ref(y|x) comes from, without a second copy when possible.

- LoRA: the trained model itself with its adapters switched off is exactly the base (no copy);
- freeze/full tuning: a frozen copy of the base model, loaded once per worker;
- ``method.reference: precomputed``: one Ray Data pass before training scores every row with the
  base model (``ReferenceLogps``) and the rows carry the result (``{prefix}ref_logps`` columns), so
  the workers hold no reference and run one forward less per step.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from raytune_ft.config import ConfigError, JobConfig
from raytune_ft.data import IGNORE_INDEX, SCORED_SEQUENCES, pad_batch
from raytune_ft.models import load_base

__all__ = [
    "AdapterOffReference",
    "FrozenReference",
    "PrecomputedReference",
    "Reference",
    "ReferenceLogps",
    "build_reference",
    "policy_outputs",
    "sequence_logps",
    "token_logps",
    "with_reference_logps",
]


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its learned tokens, log p(y|x) = sum_t log p(y_t|x, y_<t),
    and how many tokens that is. The LM head runs only where some row learns the next token."""
    from .objectives import learned_positions, model_inputs

    keep = learned_positions(batch["labels"])
    logits = model(**model_inputs(batch), logits_to_keep=keep).logits  # (rows, len(keep), vocab)
    targets = batch["labels"][:, 1:][:, keep]
    token_logps = -torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # 0 where ignored
    return token_logps.sum(-1), (targets != IGNORE_INDEX).sum(-1)


def token_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(x_{t+1} | x_<=t) of every learned token at ``temperature`` (logits / T), shape (rows, seq - 1),
    0 where the label is masked; with ``entropy``, the policy's entropy at those positions too (else None).
    The LM head runs only where some row learns the next token."""
    logps, spread, _ = policy_outputs(model, batch, temperature, entropy)
    return logps, spread


def policy_outputs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """``token_logps`` and the model's whole output (a critic's ``values`` ride along), from one forward."""
    from .objectives import learned_positions, model_inputs

    keep = learned_positions(batch["labels"])
    out = model(**model_inputs(batch), logits_to_keep=keep)
    logits = out.logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = batch["labels"][:, 1:][:, keep]
    # log p = z_y - logsumexp(z): the full log-softmax is never held (a vocabulary-wide copy per position)
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    picked = picked * (targets != IGNORE_INDEX)
    shape = batch["labels"][:, 1:].shape
    logps = picked.new_zeros(shape).index_copy(1, keep, picked)
    if not entropy:
        return logps, None, out
    with torch.no_grad():  # a metric: no graph through a second vocabulary-wide tensor
        spread = torch.stack([_entropy(row) for row in logits.detach()])
    return logps, spread.new_zeros(shape).index_copy(1, keep, spread), out


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """-sum_v p_v log p_v of each position's distribution."""
    log_probs = logits.log_softmax(-1)
    return -(log_probs.exp() * log_probs).sum(-1)


class Reference(Protocol):
    def logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed log-probability of each row's learned tokens under the reference model (no grad)."""
        ...

    def token_logps(self, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        """Per-token log-probabilities (``token_logps``) under the reference model (no grad)."""
        ...


class AdapterOffReference:
    """The LoRA model with its adapters disabled: the frozen base, at no extra memory."""

    def __init__(self, model: Any) -> None:
        self.model = model  # the peft model, unwrapped from DDP / DeepSpeed (FSDP2 shards it in place)

    @torch.no_grad()
    def logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.model.disable_adapter():
            return sequence_logps(self.model, batch)[0]

    @torch.no_grad()
    def token_logps(self, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        with self.model.disable_adapter():
            return token_logps(self.model, batch, temperature)[0]


class FrozenReference:
    """A frozen copy of the base model (freeze and full tuning change the base weights themselves)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sequence_logps(self.model, batch)[0]

    @torch.no_grad()
    def token_logps(self, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        return token_logps(self.model, batch, temperature)[0]


class PrecomputedReference:
    """Reads the ``ref_logps`` the rows carry (``method.reference: precomputed``)."""

    def logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "ref_logps" not in batch:
            raise ConfigError("method.reference is precomputed but the rows carry no reference log-probs")
        return batch["ref_logps"]

    def token_logps(self, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        raise ConfigError("method.reference: precomputed has no per-token log-probs of generated answers; use live")


def build_reference(cfg: JobConfig, model: Any, device: torch.device) -> Reference | None:
    """The reference ``cfg`` asks for (None when the objective needs none); ``model`` is the
    prepared, unwrapped training model."""
    if not cfg.method.needs_reference:
        return None
    if cfg.method.reference == "precomputed":
        return PrecomputedReference()
    if cfg.adapter.type == "lora":
        return AdapterOffReference(model)
    return FrozenReference(load_base(cfg.model, cfg.adapter).to(device))


class ReferenceLogps:
    """Ray Data actor UDF: adds ``{prefix}ref_logps`` (the base model's summed log-probs) to scored rows.

    Rows are scored ``per_device_batch_size`` at a time, so memory stays that of one training
    micro-batch without gradients.
    """

    def __init__(self, job: dict[str, Any], pad_id: int) -> None:
        self.cfg = JobConfig.model_validate(job)
        self.model = load_base(self.cfg.model, self.cfg.adapter).eval()  # with init_from's merged adapters
        self.pad_id = pad_id
        self.chunk = self.cfg.train.per_device_batch_size

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for prefix in SCORED_SEQUENCES[self.cfg.method.rows]:
            ids, labels = batch[f"{prefix}input_ids"], batch[f"{prefix}labels"]
            chunks = [slice(i, i + self.chunk) for i in range(0, len(ids), self.chunk)]
            padded = [pad_batch(list(ids[c]), list(labels[c]), self.pad_id) for c in chunks]
            scores = [sequence_logps(self.model, rows)[0] for rows in padded]
            batch[f"{prefix}ref_logps"] = torch.cat(scores).numpy().astype(np.float32) if scores else np.zeros(0)
        return batch


def with_reference_logps(dataset: Any, cfg: JobConfig, pad_id: int) -> Any:
    """``dataset`` with every sequence's reference log-probs joined to its row, computed once by one
    ``ReferenceLogps`` actor and materialised, so the base model is released before training starts."""
    scored = dataset.map_batches(
        ReferenceLogps,
        fn_constructor_kwargs={"job": cfg.model_dump(mode="json"), "pad_id": pad_id},
        batch_size=64,
        batch_format="numpy",
        concurrency=1,
        num_cpus=1,
    )
    return scored.materialize()
