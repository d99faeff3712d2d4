"""Start from existing LoRA adapters (``adapter.init_from``, LLaMA-Factory's ``adapter_name_or_path``).

As in LLaMA-Factory, every adapter but the last is merged into the base model, and the last is loaded
trainable so that training continues it (``adapter.new_adapter``: all are merged and a fresh adapter
trains). A trained checkpoint therefore holds one plain adapter whose base is the model plus the merged
ones; chat, export and eval rebuild that base from the checkpoint's config (``load_base``).

An adapter is one of our checkpoints, a run directory (its newest checkpoint), any PEFT folder or a Hub
id. The driver fixes each to a folder or pinned id once (``pin_sources``), so a run directory that
trains on later cannot change the base under the checkpoints that name it.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_ft.config import AdapterConfig, ConfigWarning, JobConfig

from .checkpoint import ADAPTER_CONFIG, CheckpointError, is_adapter_checkpoint, latest_checkpoint
from .hub import ModelSourceError, hub_model, pin, snapshot
from .source import pin_model_source

if TYPE_CHECKING:
    import torch

__all__ = [
    "adapter_folder",
    "continued_adapter",
    "load_adapters",
    "merge_adapters",
    "merged_adapters",
    "pin_init_from",
    "pin_sources",
]

# adapter.* field -> the key of peft's adapter_config.json it describes.
_LORA_KEYS = {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "use_rslora": "use_rslora",
              "use_dora": "use_dora", "target": "target_modules"}  # fmt: skip


def adapter_folder(entry: str | Path, cache_dir: str | None = None, key: str = "adapter.init_from") -> Path:
    """The folder of one ``init_from`` entry: a PEFT adapter folder (ours or anyone's), a run directory's
    newest checkpoint, or a Hub id's snapshot (``key`` names the setting in errors)."""
    path = Path(entry).expanduser()
    if path.is_dir():
        if (path / ADAPTER_CONFIG).is_file():
            return path.resolve()
        try:
            newest = latest_checkpoint(path)
        except CheckpointError:
            newest = None
        if newest is not None and is_adapter_checkpoint(newest):
            return newest.resolve()
        raise ModelSourceError(
            f"{key} {str(entry)!r}: no {ADAPTER_CONFIG} there"
            + (f" (its newest checkpoint {newest.name} holds full weights: load it as the model)" if newest else "")
            + "; give a LoRA adapter folder, a run directory of LoRA checkpoints or a Hub id"
        )
    hub = hub_model(str(entry))
    if hub is None:
        raise ModelSourceError(f"{key} {str(entry)!r}: no such folder, and not a Hub id (org/name)")
    folder = snapshot(hub, cache_dir)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise ModelSourceError(f"{key} {str(entry)!r}: the Hub snapshot {folder} has no {ADAPTER_CONFIG}")
    return folder


def merged_adapters(adapter: AdapterConfig) -> list[str]:
    """The ``init_from`` adapters that become part of the base: all but the continued last (all with
    ``new_adapter``)."""
    return list(adapter.init_from if adapter.new_adapter else adapter.init_from[:-1])


def continued_adapter(adapter: AdapterConfig) -> str | None:
    """The ``init_from`` adapter training continues (None: none, or ``new_adapter``)."""
    return adapter.init_from[-1] if adapter.init_from and not adapter.new_adapter else None


def merge_adapters(model: torch.nn.Module, entries: list[str], cache_dir: str | None = None) -> torch.nn.Module:
    """``model`` with each adapter of ``entries`` merged into its weights, in order: a plain transformers model."""
    from peft import PeftModel

    for entry in entries:
        model = PeftModel.from_pretrained(model, adapter_folder(entry, cache_dir)).merge_and_unload()  # type: ignore[arg-type]
    return model


def load_adapters(model: torch.nn.Module, adapter: AdapterConfig, cache_dir: str | None = None) -> torch.nn.Module:
    """The training model of ``adapter.init_from``: the merged adapters in the base and the last one
    loaded trainable (or, with ``new_adapter``, a fresh LoRA adapter from ``apply_adapter``)."""
    from peft import PeftModel

    from .adapters import ADAPTERS

    model = merge_adapters(model, merged_adapters(adapter), cache_dir)
    last = continued_adapter(adapter)
    if last is None:
        return ADAPTERS["lora"](model, adapter)
    continued: torch.nn.Module = PeftModel.from_pretrained(model, adapter_folder(last, cache_dir), is_trainable=True)  # type: ignore[arg-type]
    return continued


def pin_init_from(adapter: AdapterConfig, cache_dir: str | None = None) -> AdapterConfig:
    """The ``adapter`` section a driver hands on: each ``init_from`` entry an absolute adapter folder or a
    pinned Hub id, and the LoRA settings those of the continued adapter (warned about where the config
    set others)."""
    if not adapter.init_from:
        return adapter
    pinned = adapter.model_copy(update={"init_from": [_pinned(entry, cache_dir) for entry in adapter.init_from]})
    last = continued_adapter(pinned)
    merged = len(merged_adapters(pinned))
    kept = f"continuing {last}" if last else "training a new adapter on top"
    print(f"raytune_ft: adapter.init_from: {merged} adapter(s) merged into the base, {kept}", file=sys.stderr)
    if last is None:
        return pinned
    # Only the continued adapter's settings are read here; workers fetch the Hub ones on their own nodes.
    return pinned.model_copy(update=_own_settings(adapter, adapter_folder(last, cache_dir)))


def pin_sources(cfg: JobConfig, resumed: JobConfig | None = None) -> JobConfig:
    """What the driver hands every worker, replica and checkpoint: ``model.source`` pinned to one
    revision and ``adapter.init_from`` fixed to folders (``pin_model_source``, ``pin_init_from``).

    ``resumed``: the config of the checkpoints a restarted run resumes. Where ``cfg`` names the same Hub
    repository without a commit (a branch, a tag or nothing), the revision those checkpoints were trained
    on is kept, though the branch may have moved since: the run goes on with the weights it started on.
    """
    model, adapter = cfg.model, cfg.adapter
    if resumed is not None:
        model = model.model_copy(update={"source": _resumed_pin("model.source", model.source, resumed.model.source)})
        if len(adapter.init_from) == len(resumed.adapter.init_from):
            entries = zip(adapter.init_from, resumed.adapter.init_from, strict=True)
            kept = [_resumed_pin("adapter.init_from", entry, saved) for entry, saved in entries]
            adapter = adapter.model_copy(update={"init_from": kept})
    model = pin_model_source(model)
    adapter = pin_init_from(adapter, model.cache_dir)
    return cfg.model_copy(update={"model": model, "adapter": adapter})


def _resumed_pin(key: str, source: str, saved: str) -> str:
    """``saved`` (a pinned Hub id a run's checkpoints hold) where ``source`` names its repository without a
    commit; else ``source``."""
    now, before = hub_model(source), hub_model(saved)
    if now is None or before is None or now.pinned or not before.pinned:
        return source
    if (now.hub, now.repo) != (before.hub, before.repo):
        return source
    if source != saved:
        held = "the revision the run's checkpoints were trained on"
        print(f"raytune_ft: {key} {source}: resuming on {saved}, {held}", file=sys.stderr)
    return saved


def _pinned(entry: str, cache_dir: str | None) -> str:
    """A folder entry as the absolute adapter folder it names, a Hub id pinned (fetched later, where it loads)."""
    path = Path(entry).expanduser()
    if path.is_dir():
        return str(adapter_folder(path, cache_dir))
    hub = hub_model(entry)
    if hub is None:
        raise ModelSourceError(f"adapter.init_from {entry!r}: no such folder, and not a Hub id (org/name)")
    return pin(hub, cache_dir).source


def _own_settings(adapter: AdapterConfig, folder: Path) -> dict[str, Any]:
    """The adapter.* values the continued adapter's ``adapter_config.json`` fixes, warning where the
    config had set others (those are not used)."""
    saved = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    own: dict[str, Any] = {}
    for field, key in _LORA_KEYS.items():
        value = _as_field(field, saved.get(key))
        if value is None:
            continue
        own[field] = value
        if field in adapter.model_fields_set and value != getattr(adapter, field):
            warnings.warn(
                f"adapter.{field} {getattr(adapter, field)!r} is not used: training continues {folder} with its own "
                f"{key} {value!r}",
                ConfigWarning,
                stacklevel=3,
            )
    return own


def _as_field(field: str, value: Any) -> Any:
    """A peft config value in our field's form; None where it has none (a regex target, a fractional alpha)."""
    if value is None:
        return None
    if field == "target":
        return sorted(value) if isinstance(value, list) else None
    if field in ("rank", "alpha"):
        return int(value) if float(value).is_integer() else None
    return value
