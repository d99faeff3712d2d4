"""Attention kernels, and which architectures keep attention inside each sample when rows hold several.

Packing (``data.packing``) and padding-free micro-batches (``data.padding_free``) put several samples
in one row with position ids restarting at each. Given the position ids and no attention mask,
transformers keeps the samples apart, but only in models built on its shared masking code (Falcon's
ALiBi path, for one, lets samples see each other). ``PACKED_ATTENTION`` lists the model types whose
packed loss was checked equal to the padded one (tests/unit/test_packing.py re-checks every entry);
others are padded.

How the samples are kept apart depends on the kernel (``model.attn_implementation``):

- ``sdpa`` is ours: PyTorch's ``scaled_dot_product_attention`` run causally on each sample of a row,
  found from the restarting position ids, so no mask is built. transformers' own sdpa path would build
  a dense seq x seq mask for a packed row (64 MiB of booleans per row at 8192 tokens, and the masked
  kernel then materialises the scores). Rows with padding (preference pairs, evaluation, generation)
  take transformers' path with its mask; a trailing pad after a causal sample changes nothing.
- ``flash_attention_2`` / ``flash_attention_3`` (CUDA) turn the position ids into ``cu_seqlens``.
- ``flex_attention`` builds a block-sparse ``BlockMask``; torch has no flex backward pass on CPU, so it
  trains on CUDA only.
- ``eager`` materialises the scores with a dense mask, as transformers always does.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

__all__ = ["PACKED_ATTENTION", "PACKED_SDPA", "keeps_attention_in_sample", "transformers_attention"]

PACKED_ATTENTION = frozenset({
    "apertus", "cohere", "exaone4", "gemma", "gemma2", "gemma3_text", "gpt_neox", "granite", "llama",
    "mistral", "mixtral", "olmo2", "phi", "phi3", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "seed_oss",
    "stablelm", "starcoder2",
})  # fmt: skip

PACKED_SDPA = "raytune_sdpa"
"""The name ``model.attn_implementation: sdpa`` is registered under in transformers' attention registry (not
saved with a model: transformers does not write the attention kernel into config.json)."""

_FLASH_PACKAGES = {"flash_attention_2": "flash-attn", "flash_attention_3": "flash-attn-3 (flash_attn_interface)"}


def keeps_attention_in_sample(model: Any) -> bool:
    """Whether ``model`` (a transformers model, possibly wrapped by peft) is of a checked type."""
    return getattr(getattr(model, "config", None), "model_type", None) in PACKED_ATTENTION


def transformers_attention(requested: str, device_type: str) -> str:
    """The transformers ``attn_implementation`` for ``model.attn_implementation`` on a ``device_type`` worker.

    ``auto`` takes the fastest installed kernel that keeps packed samples apart without a dense mask: on CUDA
    FlashAttention-3 (Hopper), then FlashAttention-2, then our sdpa; on CPU our sdpa (flex has no CPU backward).
    """
    kernel = _fastest(device_type) if requested == "auto" else requested
    if kernel in _FLASH_PACKAGES and not _flash_available(kernel):
        raise ValueError(
            f"model.attn_implementation {kernel} needs a CUDA worker with the {_FLASH_PACKAGES[kernel]} package "
            "installed in its environment; install it there, or use auto (picks the fastest installed kernel)"
        )
    if kernel == "sdpa":
        _register_packed_sdpa()
        return PACKED_SDPA
    return kernel


def _fastest(device_type: str) -> str:
    if device_type != "cuda":
        return "sdpa"
    import torch

    if torch.cuda.get_device_capability()[0] == 9 and _flash_available("flash_attention_3"):
        return "flash_attention_3"
    return "flash_attention_2" if _flash_available("flash_attention_2") else "sdpa"


def _flash_available(kernel: str) -> bool:
    import torch
    from transformers import utils

    if not torch.cuda.is_available():
        return False
    name = "is_flash_attn_3_available" if kernel == "flash_attention_3" else "is_flash_attn_2_available"
    return bool(getattr(utils, name)())


@functools.cache
def _register_packed_sdpa() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(PACKED_SDPA, _packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, _packed_sdpa_mask)


def _packed_sdpa_mask(*args: Any, **kwargs: Any) -> Any:
    """No mask for rows without padding (packed or not): :func:`_packed_sdpa` finds the samples itself.
    With padding, transformers' sdpa mask."""
    if kwargs.get("attention_mask") is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def _packed_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal sdpa on each sample of each row (samples start where the position ids do not continue); with a
    mask, a cache or one query, transformers' sdpa. Sliding windows are honoured; logit soft-capping is not,
    as in transformers' sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    positions = kwargs.get("position_ids")
    length = query.shape[2]
    if attention_mask is not None or positions is None or length != key.shape[2] or length == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)  # type: ignore[no-any-return]
    import torch
    import torch.nn.functional as F

    rows_bounds = _sample_bounds(positions, query.shape[0], length)
    window, gqa = kwargs.get("sliding_window"), query.shape[1] != key.shape[1]

    def attend(rows: slice, begin: int, end: int) -> Any:
        q, k, v = (t[rows, :, begin:end] for t in (query, key, value))
        mask = _window_mask(end - begin, window, query.device)
        causal = mask is None
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout, scale=scaling, enable_gqa=gqa
        )

    if all(len(bounds) == 2 for bounds in rows_bounds):  # one sample per row: one call for the batch
        return attend(slice(None), 0, length).transpose(1, 2).contiguous(), None
    out = []
    for row, bounds in enumerate(rows_bounds):
        parts = [attend(slice(row, row + 1), begin, end) for begin, end in itertools.pairwise(bounds)]
        out.append(torch.cat(parts, dim=2))
    return torch.cat(out, dim=0).transpose(1, 2).contiguous(), None


_last_bounds: tuple[Any, list[list[int]]] | None = None
"""The position ids of the last forward pass and their sample bounds: every layer gets the same tensor, so the
bounds (and the device-to-host copy they need) are found once per forward, not once per layer."""


def _sample_bounds(positions: Any, rows: int, length: int) -> list[list[int]]:
    """Per row, the start of each sample (where the position ids do not continue) and ``length`` at the end."""
    global _last_bounds
    last = _last_bounds  # one read: a serving thread may replace it meanwhile
    if last is not None and last[0] is positions:
        return last[1]
    import torch

    grid = positions.reshape(-1, length).expand(rows, length)  # one row of positions: shared by the batch
    starts = torch.ones_like(grid, dtype=torch.bool)
    starts[:, 1:] = grid[:, 1:] != grid[:, :-1] + 1
    bounds = [[i for i, start in enumerate(row) if start] + [length] for row in starts.tolist()]
    _last_bounds = (positions, bounds)
    return bounds


def _window_mask(length: int, window: int | None, device: Any) -> Any:
    """A causal sliding-window mask for one sample longer than the window; None (plain causal) otherwise."""
    if window is None or length <= window:
        return None
    import torch

    index = torch.arange(length, device=device)
    distance = index[:, None] - index[None, :]
    return (distance >= 0) & (distance < window)
