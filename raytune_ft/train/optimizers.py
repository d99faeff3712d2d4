"""Optimizers as a registry: ``train.optimizer`` names a builder that turns the trainable parameters and
the train config into one torch optimizer.

Every builder returns a single ``torch.optim.Optimizer``: the learning-rate schedule drives its param
groups, the checkpoint holds its ``state_dict``, and the strategies step it, whatever the rule inside.
Muon mixes two rules (orthogonalised momentum for hidden matrices, AdamW for the rest), so it is one
optimizer with two kinds of groups rather than two optimizers. LoRA+ is a grouping, not an optimizer: it
gives the LoRA B matrices their own learning rate under whichever optimizer is chosen.

Each group carries ``lr_ratio``, its learning rate over ``train.learning_rate`` (None: a fixed rate), so a
resumed run with a new learning rate (or a PBT trial) rescales every group the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from raytune_ft.config import ConfigError, TrainConfig

__all__ = ["OPTIMIZERS", "MuonWithAdamW", "build_optimizer", "group_learning_rate", "param_groups"]

Named = list[tuple[str, torch.nn.Parameter]]
Builder = Callable[[torch.nn.Module, Named, TrainConfig], torch.optim.Optimizer]


def param_groups(named: Named, cfg: TrainConfig) -> list[dict[str, Any]]:
    """One group of every trainable parameter, or LoRA+'s groups: A matrices at the learning rate, B
    matrices (and biases) at ``loraplus_lr_ratio`` times it, embedding B matrices at ``loraplus_lr_embedding``
    (Hayou et al. 2024, section 4)."""
    ratio = cfg.loraplus_lr_ratio
    if ratio is None:
        return [{"params": [p for _, p in named], "lr_ratio": 1.0}]
    a, b, embedding = [], [], []
    for name, param in named:
        if "lora_embedding_B" in name:
            embedding.append(param)
        elif "lora_B" in name or param.ndim == 1:
            b.append(param)
        else:
            a.append(param)
    groups: list[dict[str, Any]] = [
        {"params": a, "lr_ratio": 1.0},
        {"params": b, "lr_ratio": ratio},
        {"params": embedding, "lr_ratio": None, "lr": cfg.loraplus_lr_embedding},
    ]
    return [_with_lr(group, cfg) for group in groups if group["params"]]


def group_learning_rate(group: dict[str, Any], learning_rate: float) -> float:
    """A group's peak learning rate under ``learning_rate``."""
    ratio = group.get("lr_ratio", 1.0)
    return float(group.get("initial_lr", group["lr"])) if ratio is None else learning_rate * ratio


def _with_lr(group: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    return {**group, "lr": group_learning_rate(group, cfg.learning_rate)}


def _adam_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    return {
        "lr": cfg.learning_rate,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "eps": cfg.adam_epsilon,
        "weight_decay": cfg.weight_decay,
    }


def _adamw(model: torch.nn.Module, named: Named, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(named, cfg), **_adam_kwargs(cfg))


def _adamw_fused(model: torch.nn.Module, named: Named, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(named, cfg), fused=True, **_adam_kwargs(cfg))


def _bitsandbytes(name: str) -> Builder:
    def build(model: torch.nn.Module, named: Named, cfg: TrainConfig) -> torch.optim.Optimizer:
        import bitsandbytes as bnb

        optimizer: torch.optim.Optimizer = getattr(bnb.optim, name)(param_groups(named, cfg), **_adam_kwargs(cfg))
        return optimizer

    return build


def _adafactor(model: torch.nn.Module, named: Named, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adafactor (Shazeer & Stern 2018) with an external learning rate, as Hugging Face's Trainer runs it."""
    from transformers.optimization import Adafactor

    return Adafactor(
        param_groups(named, cfg), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
        scale_parameter=False, relative_step=False, warmup_init=False,
    )  # fmt: skip


def _sgd(model: torch.nn.Module, named: Named, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(named, cfg), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _projected(model: torch.nn.Module, named: Named, targets: list[str]) -> tuple[Named, Named]:
    """(matrices of the targeted linear layers, everything else) among the trainable parameters, as
    LLaMA-Factory selects them for GaLore and APOLLO: ``all`` means every linear layer but the LM head."""
    inner: Any = getattr(model, "module", model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    chosen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if targets == ["all"] or any(target in name for target in targets):
            chosen.add(id(module.weight))
    projected = [(n, p) for n, p in named if id(p) in chosen and p.ndim == 2]
    if not projected:
        raise ConfigError(f"no trainable linear weight matches the optimizer's target {targets}")
    return projected, [(n, p) for n, p in named if id(p) not in chosen]


def _low_rank_groups(projected: Named, rest: Named, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """A plain group, then the projected matrices with the projection's settings."""
    groups = [{"params": [p for _, p in rest], "lr_ratio": 1.0}]
    return [g for g in groups if g["params"]] + [{"params": [p for _, p in projected], "lr_ratio": 1.0, **settings}]


def _galore(model: torch.nn.Module, named: Named, cfg: TrainConfig) -> torch.optim.Optimizer:
    """GaLore (Zhao et al. 2024, algorithm 2): AdamW moments of gradients projected to ``rank``."""
    from galore_torch import GaLoreAdamW

    g = cfg.galore
    projected, rest = _projected(model, named, g.target)
    settings = {"rank": g.rank, "update_proj_gap": g.update_interval, "scale": g.scale, "proj_type": g.proj_type}
    optimizer: torch.optim.Optimizer = GaLoreAdamW(
        _low_rank_groups(projected, rest, settings), no_deprecation_warning=True, **_adam_kwargs(cfg)
    )
    return optimizer


def _apollo(model: torch.nn.Module, named: Named, cfg: TrainConfig) -> torch.optim.Optimizer:
    """APOLLO (Zhu et al. 2025, algorithm 1): AdamW moments of a low-rank projection scale the raw gradient."""
    from apollo_torch import APOLLOAdamW

    a = cfg.apollo
    projected, rest = _projected(model, named, a.target)
    settings = {
        "rank": a.rank, "proj": a.proj, "proj_type": a.proj_type, "update_proj_gap": a.update_interval,
        "scale": a.scale, "scale_type": a.scale_type, "scale_front": a.scale_front,
    }  # fmt: skip
    optimizer: torch.optim.Optimizer = APOLLOAdamW(_low_rank_groups(projected, rest, settings), **_adam_kwargs(cfg))
    return optimizer


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024) on the 2-D hidden matrices and AdamW on every other parameter (embeddings,
    the LM head, norms, biases), as one optimizer. torch's ``Muon`` and ``AdamW`` do the work; they share
    this optimizer's param groups (marked ``muon``) and state, so schedules and checkpoints see one optimizer.
    Muon's learning rate is adjusted to match AdamW's update RMS (``match_rms_adamw``, Liu et al. 2025), so
    one ``learning_rate`` suits both."""

    def __init__(self, groups: list[dict[str, Any]], cfg: TrainConfig) -> None:
        super().__init__(groups, {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay})
        muon = [g for g in self.param_groups if g["muon"]]
        adamw = [g for g in self.param_groups if not g["muon"]]
        self.muon = torch.optim.Muon(muon, lr=cfg.learning_rate, adjust_lr_fn="match_rms_adamw") if muon else None
        self.adamw = torch.optim.AdamW(adamw, **_adam_kwargs(cfg)) if adamw else None
        self._share()

    def _share(self) -> None:
        for inner, muon in ((self.muon, True), (self.adamw, False)):
            if inner is not None:
                inner.param_groups = [g for g in self.param_groups if g["muon"] is muon]
                inner.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._share()  # loading replaced the groups and the state with new objects

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for inner in (self.muon, self.adamw):
            if inner is not None:
                inner.step()
        return loss


def _muon(model: torch.nn.Module, named: Named, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Muon's groups: each of ``param_groups`` split into its hidden matrices (Muon) and the rest (AdamW)."""
    hidden = {id(p) for n, p in named if p.ndim == 2 and "embed" not in n and "lm_head" not in n}
    groups = []
    for group in param_groups(named, cfg):
        params = group.pop("params")
        for muon in (True, False):
            members = [p for p in params if (id(p) in hidden) is muon]
            if members:
                groups.append({**group, "params": members, "muon": muon})
    return MuonWithAdamW(groups, cfg)


OPTIMIZERS: dict[str, Builder] = {
    "adamw": _adamw,
    "adamw_fused": _adamw_fused,
    "adamw_8bit": _bitsandbytes("AdamW8bit"),
    "paged_adamw_8bit": _bitsandbytes("PagedAdamW8bit"),
    "adafactor": _adafactor,
    "galore_adamw": _galore,
    "apollo_adamw": _apollo,
    "muon": _muon,
    "sgd": _sgd,
}
"""``train.optimizer`` -> builder over (model, trainable named parameters, train config)."""


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable parameters only."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("the model has no trainable parameters; check adapter.type and adapter.target")
    return OPTIMIZERS[cfg.optimizer](model, named, cfg)
