"""``raytune-ft export``: a checkpoint in, one standalone model folder out, never half-written.

The export is built in a hidden staging folder beside the destination and moved into place only
when complete, so an interrupted export leaves nothing behind and an existing folder is replaced
only when ``--overwrite`` says so, and only once its replacement is whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raytune_ft.config import ExportConfig, JobConfig
from raytune_ft.data.templates import apply_template, template_options
from raytune_ft.models import VALUE_HEAD_WEIGHTS

from .gguf import write_gguf
from .merge import ExportError, MergedModel, describe, export_dtype, merge_checkpoint, merge_init_from

__all__ = ["EXPORT_FORMATS", "MANIFEST", "export_checkpoint", "export_init_from"]

MANIFEST = "raytune_ft_export.json"


def _save_hf(merged: MergedModel, folder: Path, cfg: ExportConfig) -> None:
    """Hugging Face safetensors, sharded at ``cfg.max_shard_size``, with tokenizer and chat template."""
    model = merged.model.to(export_dtype(merged, cfg))
    model.save_pretrained(folder, max_shard_size=cfg.max_shard_size)
    merged.tokenizer.save_pretrained(folder)
    head = merged.checkpoint / VALUE_HEAD_WEIGHTS
    if head.is_file():  # a reward model's score head travels with it
        shutil.copy2(head, folder / VALUE_HEAD_WEIGHTS)


def _save_gguf(merged: MergedModel, folder: Path, cfg: ExportConfig) -> None:
    """One ``model-<type>.gguf`` (f16 or q8_0) with tokenizer and chat template inside."""
    name = merged.checkpoint.parent.name or "model"
    write_gguf(merged.model, merged.tokenizer, folder / f"model-{cfg.gguf_type}.gguf", cfg.gguf_type, name)


EXPORT_FORMATS: dict[str, Callable[[MergedModel, Path, ExportConfig], None]] = {"hf": _save_hf, "gguf": _save_gguf}


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    cfg: ExportConfig,
    overwrite: bool = False,
    base: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Merge the newest checkpoint under ``checkpoint`` and write it to ``out`` in ``cfg.format``."""
    target = Path(out).expanduser().resolve()
    _check_target(target, Path(checkpoint).expanduser().resolve(), overwrite)
    log(f"merging {checkpoint} ...")
    return _write(merge_checkpoint(checkpoint, base), target, cfg, log)


def export_init_from(
    job: JobConfig, out: str | Path, overwrite: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Merge ``job``'s ``adapter.init_from`` adapters into its ``model.source`` and write the result to
    ``out`` as ``job.export`` says (LLaMA-Factory's merge YAML)."""
    target = Path(out).expanduser().resolve()
    for entry in job.adapter.init_from:
        _check_target(target, Path(entry).expanduser().resolve(), overwrite)
    log(f"merging {', '.join(job.adapter.init_from)} into {job.model.source} ...")
    merged = merge_init_from(job)
    if job.data.template is not None:  # the file names the prompt format: the export carries it
        apply_template(merged.tokenizer, job.data.template, template_options(job.data))
    return _write(merged, target, job.export, log)


def _write(merged: MergedModel, target: Path, cfg: ExportConfig, log: Callable[[str], None]) -> Path:
    log(f"writing {cfg.format} to {target} ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        EXPORT_FORMATS[cfg.format](merged, staging, cfg)
        manifest: dict[str, Any] = {**describe(merged), "format": cfg.format, **_format_fields(cfg)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        staging.chmod(0o755)
        _replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _format_fields(cfg: ExportConfig) -> dict[str, Any]:
    if cfg.format == "gguf":
        return {"gguf_type": cfg.gguf_type}
    return {"dtype": cfg.dtype, "max_shard_size": cfg.max_shard_size}


def _check_target(target: Path, source: Path, overwrite: bool) -> None:
    if target == source or source in target.parents or target in source.parents:
        raise ExportError(f"--out {target}: it overlaps the checkpoint {source}; export to a folder outside the run")
    if target.exists() and not target.is_dir():
        raise ExportError(f"--out {target}: a file is there, not a folder; choose another --out")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ExportError(
            f"--out {target}: the folder is not empty; choose another --out, or pass --overwrite to replace "
            "its contents (they are removed only once the new export is complete)"
        )


def _replace(staging: Path, target: Path) -> None:
    """Move the finished export into place; an old folder is removed only after the move succeeds."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
