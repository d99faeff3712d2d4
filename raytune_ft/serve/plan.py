"""What an endpoint will serve, decided on the driver before Ray starts: model, tokenizer, adapters, key.

``plan_serving`` turns a job config (and optionally a run directory, ``--checkpoint``) into a
``ServePlan``. Every path and adapter is checked here, so a typo is one clear error instead of a
replica that fails a minute into engine start.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft.config import SERVED_NAME, ConfigWarning, InputError, JobConfig, ServeConfig, load_config
from raytune_ft.models.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    adapter_rank,
    is_adapter_checkpoint,
    latest_checkpoint,
    vllm_lora_rank,
)
from raytune_ft.models.source import resolve_model_source

from .adapters import AdapterCatalog

__all__ = ["API_KEY_ENV", "ServePlan", "checkpoint_config", "key_digest", "plan_serving", "replica_options"]

API_KEY_ENV = "RAYTUNE_FT_API_KEY"


@dataclass(frozen=True)
class ServePlan:
    model_id: str
    """The base model's name in the API."""
    model_dir: Path
    """Local Hugging Face folder of the served weights (base, merged export or full fine-tune)."""
    tokenizer_dir: Path
    """Folder whose tokenizer and chat template requests are rendered with."""
    catalog: AdapterCatalog
    """The LoRA adapters on top of the base (empty when none are configured)."""
    max_lora_rank: int | None
    """Largest LoRA rank the engine reserves room for; None serves no adapters."""
    api_key_digest: str | None
    """SHA-256 of the API key (the key itself never leaves the driver); None leaves the endpoint open."""
    serve: ServeConfig
    """The ``serve`` section it was planned from."""


def plan_serving(cfg: JobConfig, checkpoint: str | None = None) -> ServePlan:
    """The plan for serving ``cfg.model.source`` (or ``checkpoint``'s run) with ``cfg.serve``'s adapters."""
    serve = cfg.serve
    runs = dict(serve.adapters)
    source, tokenizer_dir, full_run = cfg.model.source, None, None
    if checkpoint is not None:
        newest = latest_checkpoint(checkpoint)
        trained = checkpoint_config(newest)
        tokenizer_dir = newest  # the chat template the run trained with
        if is_adapter_checkpoint(newest):
            source = trained.model.source
            runs.setdefault(_served_name(trained.train.run_name), checkpoint)
        else:
            source, full_run = str(newest), _served_name(trained.train.run_name)
    model_dir = resolve_model_source(source)
    model_id = serve.model_name or full_run or _default_name(source)
    runs = {name: str(Path(path).expanduser().absolute()) for name, path in runs.items()}
    catalog = AdapterCatalog(model_id, runs, _checked_root(serve.adapter_root))
    _check_adapters(catalog, model_dir)
    return ServePlan(
        model_id=model_id,
        model_dir=model_dir,
        tokenizer_dir=tokenizer_dir or model_dir,
        catalog=catalog,
        max_lora_rank=_lora_rank(serve, catalog),
        api_key_digest=key_digest(serve.api_key or os.environ.get(API_KEY_ENV) or None),
        serve=serve,
    )


def replica_options(serve: ServeConfig) -> dict[str, Any]:
    """Serve deployment options for the replica count: fixed ``num_replicas`` or ``autoscaling``."""
    if serve.autoscaling is not None:
        return {"autoscaling_config": serve.autoscaling.model_dump()}
    return {"num_replicas": serve.num_replicas}


def checkpoint_config(folder: Path) -> JobConfig:
    """The job config a checkpoint was trained with."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE} in this checkpoint; it was not written by raytune-ft train")
    return load_config(path)


def key_digest(key: str | None) -> str | None:
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def _default_name(source: str) -> str:
    if source.startswith("builtin:"):
        return source.removeprefix("builtin:")
    return _served_name(Path(source).expanduser().resolve().name)


def _served_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_")[:64] or "model"
    return name if re.match(SERVED_NAME, name) else f"m{name}"[:64]


def _checked_root(root: str | None) -> str | None:
    """``root`` as an absolute path (replicas run in other folders); a missing one is only warned about."""
    if root is None:
        return None
    folder = Path(root).expanduser().absolute()
    if not folder.is_dir():
        warnings.warn(
            f"serve.adapter_root {root!r}: no such folder yet; runs written to {folder} later become servable",
            ConfigWarning,
            stacklevel=2,
        )
    return str(folder)


def _check_adapters(catalog: AdapterCatalog, model_dir: Path) -> None:
    for name, path in catalog.runs.items():
        versions = catalog.versions(name)
        if not versions:
            raise InputError(
                f"serve.adapters.{name}: {path!r} holds no LoRA adapter checkpoint (a folder with "
                "adapter_config.json and trainer_state.json, or a run directory of them)"
            )
        trained = checkpoint_config(versions[max(versions)]).model.source
        if resolve_model_source(trained).resolve() != model_dir.resolve():
            raise InputError(
                f"serve.adapters.{name}: trained on {trained!r}, but the served base model is {str(model_dir)!r}; "
                "an adapter only works on its own base (serve it from an app with that model.source)"
            )


def _lora_rank(serve: ServeConfig, catalog: AdapterCatalog) -> int | None:
    if not catalog.runs and catalog.root is None:
        return None
    wanted = serve.max_lora_rank or max(
        [16, *(adapter_rank(max(catalog.versions(name).items())[1]) for name in catalog.names())]
    )
    return vllm_lora_rank(wanted)
