"""PiSSA adapters kept loadable on the original base model: saved as plain LoRA, restored from it.

PiSSA (Meng et al. 2024, "Principal Singular values and Singular vectors Adaptation") starts the
adapter from the top-r singular triplets of each target weight and trains on the residual:
``W = W_res + s B0 A0``. An adapter trained that way only fits ``W_res``, so a checkpoint stores the
change as a plain LoRA of rank 2r on ``W`` (peft's ``subtract_mutated_init``):

    W_res + s B A  =  W + s (B A - B0 A0)  =  W + s [B, -B0] [A ; A0]

with alpha doubled (x sqrt 2 under rsLoRA) so that the scale s stays the same. Chat, serve and export
load it like any LoRA adapter; resuming splits it back into the trained (A, B) and initial (A0, B0)
halves and rebuilds ``W_res`` from them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "INITIAL_ADAPTER",
    "as_plain_lora",
    "initial_adapter",
    "plain_lora_config",
    "restore_from_plain_lora",
    "save_weights",
    "split_plain_lora",
]

INITIAL_ADAPTER = "raytune_ft_pissa_initial"
"""Attribute of a PiSSA-initialised peft model holding its initial adapter weights (A0, B0)."""


def initial_adapter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the adapter weights as PiSSA initialised them, named as in ``model.state_dict()``."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if _is_lora(name)}


def as_plain_lora(state: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every PiSSA pair (A, B) replaced by the rank-2r LoRA ``[A ; A0]``, ``[B, -B0]``."""
    import torch

    out = dict(state)
    for name, init in initial.items():
        if ".lora_A." in name:
            out[name] = torch.cat([state[name], init.to(state[name])], dim=0)
        else:
            out[name] = torch.cat([state[name], -init.to(state[name])], dim=1)
    return out


def split_plain_lora(
    a: torch.Tensor, b: torch.Tensor
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((A, B), (A0, B0))`` from a saved rank-2r pair (the inverse of ``as_plain_lora``)."""
    rank = a.shape[0] // 2
    return (a[:rank], b[:, :rank]), (a[rank:], -b[:, rank:])


@contextlib.contextmanager
def plain_lora_config(config: Any) -> Iterator[None]:
    """Temporarily describe ``config`` (a peft LoraConfig) as the rank-2r plain LoRA a checkpoint holds."""
    saved = (config.r, config.lora_alpha, config.init_lora_weights, dict(config.rank_pattern or {}))
    config.r *= 2
    config.lora_alpha *= math.sqrt(2) if config.use_rslora else 2
    config.init_lora_weights = True
    config.rank_pattern = {key: 2 * value for key, value in saved[3].items()}
    try:
        yield
    finally:
        config.r, config.lora_alpha, config.init_lora_weights, config.rank_pattern = saved


def restore_from_plain_lora(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Set a freshly PiSSA-initialised peft ``model`` to a saved checkpoint's state.

    ``weights`` is the checkpoint's adapter file (rank-2r pairs keyed without the adapter name). Each
    layer's base weight becomes ``W - s B0 A0`` (``W`` recovered from the fresh init) and its adapter
    the trained (A, B); the model's initial adapter becomes the saved (A0, B0).
    """
    import torch

    initial = {}
    with torch.no_grad():
        for path, module in model.named_modules():
            if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
                continue
            saved_a, saved_b = weights[f"{path}.lora_A.weight"], weights[f"{path}.lora_B.weight"]
            (a, b), (a0, b0) = split_plain_lora(saved_a, saved_b)
            lora_a, lora_b = module.lora_A["default"].weight, module.lora_B["default"].weight
            base, scale = module.get_base_layer().weight, module.scaling["default"]
            original = base + scale * (lora_b @ lora_a)  # the fresh init removed its own B0 A0 from W
            base.copy_(original - scale * (b0.to(base) @ a0.to(base)))
            lora_a.copy_(a)
            lora_b.copy_(b)
            initial[f"{path}.lora_A.default.weight"] = a0.clone()
            initial[f"{path}.lora_B.default.weight"] = b0.clone()
    setattr(model, INITIAL_ADAPTER, initial)


def save_weights(model: torch.nn.Module, folder: Any, state: dict[str, torch.Tensor]) -> None:
    """``model.save_pretrained(folder)`` with ``state`` as its weights; a PiSSA adapter as plain LoRA."""
    initial = getattr(model, INITIAL_ADAPTER, None)
    if initial is None:
        model.save_pretrained(folder, state_dict=state)  # type: ignore[operator]
        return
    with plain_lora_config(model.peft_config["default"]):  # type: ignore[index]
        model.save_pretrained(folder, state_dict=as_plain_lora(state, initial))  # type: ignore[operator]


def _is_lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name
