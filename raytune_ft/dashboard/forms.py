"""Configure: the common config fields as a form, read from and written to the CLI's own YAML.

Values go through ``with_values``, the loader's own path, so the form accepts exactly what the CLI
accepts and its errors are the loader's messages, by key, to sit under the field at fault.
Widgets follow the field types (a choice for a ``Literal``, a checkbox for a ``bool``, YAML text
otherwise) and each field's help is its docstring in the schema, so nothing is documented twice.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from raytune_ft.config import ConfigError, InputError, JobConfig, dump_config, with_values

__all__ = ["FORM_KEYS", "choices", "errors_by_key", "field_info", "form_values", "parse_value",
           "save_config", "show_value", "updated_config"]  # fmt: skip

FORM_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("model.source", "model.dtype", "model.gradient_checkpointing"),
    "dataset": ("data.dataset", "data.dataset_dir", "data.template", "data.cutoff_len", "data.max_samples",
                "data.val_size", "data.packing"),
    "method": ("method.stage", "method.loss", "method.beta"),
    "adapter": ("adapter.type", "adapter.rank", "adapter.alpha", "adapter.dropout", "adapter.target",
                "adapter.use_dora", "adapter.use_rslora"),
    "scaling": ("scaling.num_workers", "scaling.strategy", "scaling.use_gpu", "scaling.cpus_per_worker"),
    "training": ("train.run_name", "train.storage_path", "train.learning_rate", "train.num_epochs",
                 "train.max_steps", "train.per_device_batch_size", "train.gradient_accumulation_steps",
                 "train.lr_scheduler", "train.warmup_ratio", "train.logging_steps", "train.eval_steps",
                 "train.save_steps"),
}  # fmt: skip
"""Form sections (their titles are translated) and the dotted keys each shows."""


def field_info(key: str) -> FieldInfo:
    """The schema field behind a dotted key such as ``train.learning_rate``."""
    model: type[BaseModel] = JobConfig
    *sections, leaf = key.split(".")
    for part in sections:
        annotation = model.model_fields[part].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation
    return model.model_fields[leaf]


def choices(key: str) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` field, else None."""
    annotation = field_info(key).annotation
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def form_values(cfg: JobConfig) -> dict[str, Any]:
    """Every form key's current value in ``cfg``."""
    raw = cfg.model_dump(mode="json")
    values: dict[str, Any] = {}
    for keys in FORM_KEYS.values():
        for key in keys:
            section, leaf = key.split(".")
            values[key] = raw[section][leaf]
    return values


def show_value(value: Any) -> str:
    """A value as the text box shows it (YAML flow style; empty for None)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def parse_value(text: str) -> Any:
    """A text box's content as the CLI's ``key=value`` would read it (empty means None)."""
    return yaml.safe_load(text) if text.strip() else None


def updated_config(base: JobConfig, values: dict[str, Any]) -> JobConfig:
    """``base`` with the form's values, validated by the loader (raises ``ConfigError``)."""
    return with_values(base, values, source="form")


def errors_by_key(err: ConfigError) -> dict[str, str]:
    """The loader's problems by dotted key (what a field shows); a message without any, under ``""``."""
    return dict(err.problems) if err.problems else {"": str(err)}


def save_config(cfg: JobConfig, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``cfg`` as YAML the CLI runs; an existing file is replaced only when ``overwrite`` is given."""
    target = Path(path).expanduser()
    if target.suffix not in (".yaml", ".yml"):
        raise InputError(f"{target}: a config file name ends in .yaml or .yml")
    if target.exists() and not overwrite:
        raise InputError(f"{target} exists; tick 'overwrite' to replace it, or choose another name")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"# written by the raytune-ft dashboard; run: raytune-ft train {target}\n{dump_config(cfg)}",
                      encoding="utf-8")  # fmt: skip
    return target
