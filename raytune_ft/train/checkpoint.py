"""Write and restore training checkpoints in the layout of ``raytune_ft.models.checkpoint``.

A checkpoint holds everything a resumed run needs to continue where it stopped: trained
weights (adapter or full), optimizer + scheduler + RNG state, the global step and the data
position, plus the tokenizer and resolved config that make it usable for inference on its own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from raytune_ft.config import JobConfig, TrainConfig, dump_config
from raytune_ft.models import (
    ADAPTER_WEIGHTS,
    CONFIG_FILE,
    OPTIMIZER_FILE,
    PISSA_INITIAL_ADAPTER,
    STATE_FILE,
    CheckpointError,
    is_adapter_checkpoint,
    restore_from_plain_lora,
    save_weights,
)

from .optimizers import group_learning_rate
from .step import StepCore

__all__ = ["TrainState", "load_weights_into", "restore_state", "save_checkpoint"]


@dataclass
class TrainState:
    global_step: int = 0
    """Optimizer steps completed."""
    epoch: int = 0
    """Current pass over the data (0-based)."""
    batches_in_epoch: int = 0
    """Micro-batches of the current epoch this worker has consumed."""
    online: dict[str, float] = field(default_factory=dict)
    """An online stage's adaptive values, the same on every worker (PPO's KL coefficient and reward moments)."""


def save_checkpoint(folder: Path, core: StepCore, tokenizer: Any, cfg: JobConfig, state: TrainState) -> bool:
    """Write this worker's part of a self-contained checkpoint into ``folder``; every worker calls it.

    Rank 0 writes the exported weights (the whole model or adapter, gathered by the strategy), the
    tokenizer, config, progress and optimizer file; a sharded strategy also has every worker write
    its shards. Returns whether this worker wrote anything (and so has a checkpoint to report).
    """
    weights = core.strategy.full_state_dict(core.model)
    resume_state = core.strategy.save_state(folder, core.model, core.optimizer)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(), folder / _rng_file(_rank()))
    if weights is not None:
        model = core.strategy.unwrap(core.model)
        save_weights(model, folder, _in_storage_dtype(weights, model, cfg))
        _record_storage_dtype(folder, model, cfg)
        tokenizer.save_pretrained(folder)
        (folder / CONFIG_FILE).write_text(dump_config(cfg), encoding="utf-8")
        saved = {**resume_state, "scheduler": core.scheduler.state_dict(), "precision": core.precision.state_dict()}
        torch.save(saved, folder / OPTIMIZER_FILE)
        (folder / STATE_FILE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
    return folder.is_dir() and any(folder.iterdir())


def _in_storage_dtype(weights: dict[str, torch.Tensor], model: Any, cfg: JobConfig) -> dict[str, torch.Tensor]:
    """A whole model's weights in ``model.dtype`` (its float32 masters are cast; the strategy's resume state keeps
    them); an adapter stays float32, the dtype it trains in."""
    if hasattr(model, "peft_config"):
        return weights
    dtype = getattr(torch, cfg.model.dtype)
    return {name: t.to(dtype) if t.is_floating_point() else t for name, t in weights.items()}


def _record_storage_dtype(folder: Path, model: Any, cfg: JobConfig) -> None:
    """transformers writes the dtype of the model in memory (the float32 masters) into config.json; a whole
    model's checkpoint says the dtype its weights were saved in."""
    path = folder / "config.json"
    if hasattr(model, "peft_config") or not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("dtype") != cfg.model.dtype:
        config["dtype"] = cfg.model.dtype
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_weights_into(model: torch.nn.Module, folder: Path) -> None:
    """Copy an adapter checkpoint's weights into an already adapted (peft) model (a PiSSA one is
    rebuilt from its plain-LoRA form)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if not is_adapter_checkpoint(folder):
        raise CheckpointError(f"{folder}: not an adapter checkpoint")
    weights = load_file(folder / ADAPTER_WEIGHTS)
    if hasattr(model, PISSA_INITIAL_ADAPTER):
        restore_from_plain_lora(model, weights)
        return
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise CheckpointError(f"{folder}: adapter weights do not match this model: {unexpected[:3]}")


def restore_state(folder: Path, core: StepCore, train: TrainConfig | None = None) -> TrainState:
    """Restore optimizer (and a sharded strategy's model shards), scheduler and RNG from ``folder``;
    return the saved progress. Every worker calls it.

    With ``train``, its learning rate and weight decay replace the saved ones, so a run resumed
    with a new ``train.learning_rate`` (or a PBT trial continued from another's checkpoint) follows
    its own schedule from the saved step on.
    """
    saved = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=False)
    core.strategy.load_state(folder, core.model, core.optimizer, saved)
    core.scheduler.load_state_dict(saved["scheduler"])
    core.precision.load_state_dict(saved.get("precision", {}))
    if train is not None:
        _retarget(core, train)
    _restore_rng(folder, saved.get("rng"))
    return TrainState(**json.loads((folder / STATE_FILE).read_text()))


def _retarget(core: StepCore, train: TrainConfig) -> None:
    scheduler: Any = core.scheduler
    groups = core.optimizer.param_groups
    scheduler.base_lrs = [group_learning_rate(group, train.learning_rate) for group in groups]
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * factor(scheduler.last_epoch)
        group["weight_decay"] = train.weight_decay
    scheduler._last_lr = [group["lr"] for group in core.optimizer.param_groups]


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _rng_file(rank: int) -> str:
    return f"rng_state_{rank}.pth"  # one per worker: each drew its own dropout masks


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _restore_rng(folder: Path, legacy: torch.Tensor | None) -> None:
    """This worker's random state as it was at the checkpoint. A run resumed on more workers than
    saved it gives the new ranks rank 0's state (their dropout masks then repeat rank 0's)."""
    own, first = folder / _rng_file(_rank()), folder / _rng_file(0)
    path = own if own.is_file() else first
    if not path.is_file():  # saved before each worker kept its own: rank 0's, in the optimizer file
        if legacy is not None:
            torch.set_rng_state(legacy)
        return
    state = torch.load(path, map_location="cpu", weights_only=False)
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
