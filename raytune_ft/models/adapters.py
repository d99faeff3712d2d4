"""Decide which weights train: a registry from ``adapter.type`` to a function that prepares the model.

Adding DoRA, freeze tuning or QLoRA means adding an entry here; the training loop only ever sees
a model whose ``requires_grad`` flags say what to optimise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from raytune_ft.config import AdapterConfig, ConfigError

from .pissa import INITIAL_ADAPTER, initial_adapter
from .vision import is_vision_language_model, lora_targets, part_of, train_parts

if TYPE_CHECKING:  # torch loads lazily: tokenizer actors import this package and never need it
    import torch

__all__ = ["ADAPTERS", "apply_adapter", "trainable_parameters"]

AdapterFn = Callable[["torch.nn.Module", AdapterConfig], "torch.nn.Module"]


def _lora(model: torch.nn.Module, cfg: AdapterConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    target: Any = "all-linear" if cfg.target == ["all"] else cfg.target
    if is_vision_language_model(model):  # never into the frozen tower or projector
        target = lora_targets(model, cfg)
    init: Any = True
    if cfg.pissa_init:  # fast (randomised) SVD with pissa_iter iterations, or the exact SVD with -1
        init = "pissa" if cfg.pissa_iter == -1 else f"pissa_niter_{cfg.pissa_iter}"
    lora = LoraConfig(
        init_lora_weights=init,
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        task_type="CAUSAL_LM",
    )
    try:
        adapted = get_peft_model(model, lora)  # type: ignore[arg-type]
    except ValueError as err:
        raise ConfigError(f"adapter.target {cfg.target}: {err}") from None
    if cfg.pissa_init:
        setattr(adapted, INITIAL_ADAPTER, initial_adapter(adapted))  # checkpoints convert against it
    return adapted


def _full(model: torch.nn.Module, cfg: AdapterConfig) -> torch.nn.Module:
    model.requires_grad_(True)
    return model


def _freeze(model: torch.nn.Module, cfg: AdapterConfig) -> torch.nn.Module:
    """Train only the chosen decoder layers (and extra modules), as LLaMA-Factory's freeze tuning."""
    layers = _decoder_layers(model)
    n = cfg.freeze_trainable_layers
    if n == 0 or abs(n) > len(layers):
        raise ConfigError(
            f"adapter.freeze_trainable_layers {n}: choose 1..{len(layers)} (last layers) or -1..-{len(layers)} "
            f"(first layers); the model has {len(layers)} decoder layers"
        )
    chosen = layers[-n:] if n > 0 else layers[:-n]
    model.requires_grad_(False)
    for layer in chosen:
        for name, module in layer.named_children():
            if cfg.freeze_trainable_modules == ["all"] or name in cfg.freeze_trainable_modules:
                module.requires_grad_(True)
    _unfreeze_named(model, cfg.freeze_extra_modules)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"adapter.freeze_trainable_modules {cfg.freeze_trainable_modules} names no module of a decoder "
            f"layer; it has {sorted(dict(layers[0].named_children()))}"
        )
    return model


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's stack of decoder layers: its longest ModuleList (a vision-language model's: in its language
    model, not its vision tower)."""
    import torch

    stacks = [
        list(m) for name, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList) and part_of(name) in (None, "language_model")
    ]  # fmt: skip
    if not stacks:
        raise ConfigError("adapter.type freeze: this model has no stack of decoder layers to choose from")
    return max(stacks, key=len)


def _unfreeze_named(model: torch.nn.Module, names: list[str]) -> None:
    found = set()
    for path, module in model.named_modules():
        leaf = path.rsplit(".", 1)[-1]
        if leaf in names:
            module.requires_grad_(True)
            found.add(leaf)
    missing = sorted(set(names) - found)
    if missing:
        raise ConfigError(f"adapter.freeze_extra_modules: no module named {missing} in the model")


ADAPTERS: dict[str, AdapterFn] = {"lora": _lora, "freeze": _freeze, "full": _full}


def apply_adapter(model: torch.nn.Module, cfg: AdapterConfig, cache_dir: str | None = None) -> torch.nn.Module:
    """Return the model prepared for ``cfg.type`` training (wrapped by peft for LoRA); with ``cfg.init_from``,
    started from those adapters (``cache_dir``: where Hub ones are cached, ``model.cache_dir``)."""
    if cfg.init_from:
        from .init_from import load_adapters

        return load_adapters(model, cfg, cache_dir)
    adapted = ADAPTERS[cfg.type](model, cfg)
    if cfg.type != "lora" and is_vision_language_model(adapted):  # LoRA keeps to the parts that train already
        train_parts(adapted, cfg)
    return adapted


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, of the whole model also when it is sharded."""
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(_numel(p) for p in model.parameters())


def _numel(parameter: torch.nn.Parameter) -> int:
    # DeepSpeed ZeRO-3 empties partitioned parameters and keeps their size in ds_numel;
    # FSDP2's DTensors report their global size already.
    return int(getattr(parameter, "ds_numel", parameter.numel()))
