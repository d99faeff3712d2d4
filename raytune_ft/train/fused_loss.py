"""The LM head and its cross-entropy computed in chunks of positions, so the ``positions x vocab`` logits
(and their gradient) are never held whole.

With a 49k-152k vocabulary the logits are the largest activation of a small or medium model's step: 2,048
learned positions x 151,936 float32 logits is 1.2 GiB, and autograd keeps the logits, their softmax and
the gradient. Here each chunk's logits are made, turned into its loss and into the gradients of the hidden
states and the head's weight, and dropped; autograd only keeps those gradients (the size of the hidden
states and of the weight), as Liger's fused linear cross-entropy does on GPU. The loss and both gradients
equal ``F.cross_entropy(hidden @ weight.T, targets, reduction="sum")``'s (tests/unit/test_fused_loss.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["LOGITS_PER_CHUNK", "chunked_linear_cross_entropy", "hidden_states_instead_of_logits"]

LOGITS_PER_CHUNK = 2**24
"""Logits made at once (64 MiB in float32): 341 positions at a 49k vocabulary, 110 at 152k. Smaller chunks
hold less; each chunk is one matrix multiply, so much smaller ones cost speed."""


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_t [logsumexp(W h_t) - (W h_t)_{y_t}] over positions t with y_t != ignore_index (the next-token
    NLL, Radford et al. 2018, eq. 1), with the gradients d/dh_t = (softmax(W h_t) - e_{y_t}) W and
    d/dW = sum_t (softmax(W h_t) - e_{y_t}) h_t^T computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, chunk: int
    ) -> torch.Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        head = weight.to(hidden.dtype)  # the hidden states' gradient is made in their dtype; cast once
        for start in range(0, hidden.size(0), chunk):
            h, y = hidden[start : start + chunk], targets[start : start + chunk]
            logits = (h @ weight.T).float()
            valid = y != ignore_index
            picked = y.clamp(min=0)
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, picked[:, None]).squeeze(1)) * valid).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            grad = torch.softmax(logits, dim=-1)  # d loss / d logits, reusing the logits' memory footprint
            grad[torch.arange(len(y), device=y.device), picked] -= 1.0
            grad *= valid[:, None]
            grad = grad.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = grad @ head
            if grad_weight is not None:
                grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.need = (need_hidden, need_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        need_hidden, need_weight = ctx.need
        grad_hidden = saved.pop(0) * grad_out if need_hidden else None
        grad_weight = (saved.pop(0) * grad_out).to(ctx.weight_dtype) if need_weight else None
        return grad_hidden, grad_weight, None, None, None


def chunked_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
    chunk: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """Summed next-token NLL of ``targets`` (N,) under logits ``hidden`` (N, H) @ ``weight`` (V, H).T, in float32,
    never holding more than ``chunk`` positions' logits (default: ``LOGITS_PER_CHUNK`` logits)."""
    positions = chunk or max(1, LOGITS_PER_CHUNK // weight.size(0))
    loss: torch.Tensor = _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, ignore_index, positions)
    return loss


_SCALED_LOGITS = (
    "final_logit_softcapping", "logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier",
    "output_multiplier_scale",
)  # fmt: skip
"""Config attributes of models whose logits are more than ``lm_head(hidden)`` (softcapping, scaling)."""


def _whole(weight: torch.Tensor) -> bool:
    """Whether this process holds the whole weight (not an FSDP2 shard or a DeepSpeed ZeRO-3 partition)."""
    from torch.distributed.tensor import DTensor

    return not isinstance(weight, DTensor) and not hasattr(weight, "ds_id")


@contextlib.contextmanager
def hidden_states_instead_of_logits(model: torch.nn.Module) -> Iterator[torch.nn.Linear | None]:
    """Within the block the causal LM's forward returns the final hidden states where its logits were (its LM
    head is swapped for the identity) and the head is yielded, so the loss can apply it in chunks. Yields
    None, changing nothing, where the logits are more than a plain bias-free linear head of the hidden
    states."""
    inner: Any = getattr(model, "module", model)  # under DDP or a DeepSpeed engine
    base: Any = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    plain = type(head) is torch.nn.Linear and head.bias is None and _whole(head.weight)
    if not plain or any(getattr(config, name, None) not in (None, 1, 1.0) for name in _SCALED_LOGITS):
        yield None
        return
    base.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        base.set_output_embeddings(head)
