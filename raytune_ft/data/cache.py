"""Tokenize once, train many times: the tokenized dataset written as parquet at ``data.tokenized_path``.

Sweeps and restarts read the parquet files instead of tokenizing again. A manifest, written
last, records a fingerprint of everything that shaped the tokens (data settings, tokenizer and
chat template, seed); a folder whose fingerprint differs, or that has no manifest because an
earlier write stopped half way, is refused rather than overwritten or silently reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from raytune_ft.config import DataConfig

from .pipeline import PreparedData
from .sources import DataError

__all__ = ["MANIFEST", "data_fingerprint", "load_or_write"]

MANIFEST = "raytune_ft_tokenized.json"
# Settings that change which rows exist or what their tokens are; shuffling only reorders them.
_SHAPING_FIELDS = (
    "dataset", "dataset_dir", "placeholders", "cutoff_len", "train_on_prompt", "mask_history", "max_samples",
    "template", "enable_thinking", "preserve_thinking", "tool_format", "default_system", "packing", "mix_strategy",
    "interleave_probs", "val_size", "eval_dataset", "on_bad_rows",
)  # fmt: skip


def data_fingerprint(
    cfg: DataConfig, tokenizer: Any, model_source: str, seed: int, stage: str = "sft"
) -> dict[str, Any]:
    """What the cached tokens depend on, as a JSON-able dict (stored in the manifest)."""
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]
    template = hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest()[:16]
    return {
        "data": cfg.model_dump(mode="json", include=set(_SHAPING_FIELDS)),
        "model_source": model_source,
        "vocab": vocab,
        "chat_template": template,
        "seed": seed,
        "stage": stage,
    }


def load_or_write(
    path: str, fingerprint: dict[str, Any], build: Callable[[], PreparedData], shuffle_seed: int | None
) -> tuple[PreparedData, bool]:
    """The cached datasets at ``path``, written first from ``build()`` when absent; True if reused."""
    import pyarrow.fs

    location = _uri(path).rstrip("/")
    fs, root = pyarrow.fs.FileSystem.from_uri(location)
    if fs.get_file_info(root).type != pyarrow.fs.FileType.NotFound:
        saved = _read_manifest(fs, root, path)
        has_eval = bool(saved.pop("has_eval", False))
        if saved != fingerprint:
            raise DataError(_mismatch(path, saved, fingerprint))
        return _read(location, has_eval, shuffle_seed), True
    prepared = build()
    prepared.train.write_parquet(f"{location}/train")
    if prepared.eval is not None:
        prepared.eval.write_parquet(f"{location}/eval")
    with fs.open_output_stream(f"{root.rstrip('/')}/{MANIFEST}") as out:
        out.write(json.dumps({**fingerprint, "has_eval": prepared.eval is not None}, indent=1).encode())
    return _read(location, prepared.eval is not None, shuffle_seed), False


def _read(location: str, has_eval: bool, shuffle_seed: int | None) -> PreparedData:
    import ray.data

    # As many blocks as files, whatever the cluster's size: the seeded block shuffle stays the same order.
    train = ray.data.read_parquet(f"{location}/train", num_cpus=0.5, override_num_blocks=_files(f"{location}/train"))
    if shuffle_seed is not None:
        train = train.randomize_block_order(seed=shuffle_seed)
    evaluation = ray.data.read_parquet(f"{location}/eval", num_cpus=0.5) if has_eval else None
    return PreparedData(train=train, eval=evaluation)


def _files(location: str) -> int:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(location)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root))
    return max(1, sum(1 for info in infos if str(info.path).endswith(".parquet")))


def _read_manifest(fs: Any, root: str, path: str) -> dict[str, Any]:
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{MANIFEST}") as stream:
            saved: dict[str, Any] = json.loads(stream.read().decode())
    except FileNotFoundError:
        raise DataError(
            f"data.tokenized_path {path} exists but holds no {MANIFEST}: it is not a tokenized dataset, or an "
            "earlier write stopped half way. Delete it or choose another path; it is never overwritten."
        ) from None
    return saved


def _mismatch(path: str, saved: dict[str, Any], wanted: dict[str, Any]) -> str:
    changed = sorted(key for key in {**saved, **wanted} if key != "data" and saved.get(key) != wanted.get(key))
    data_saved, data_wanted = saved.get("data", {}), wanted.get("data", {})
    changed += [f"data.{k}" for k in sorted(data_wanted) if data_saved.get(k) != data_wanted.get(k)]
    return (
        f"data.tokenized_path {path} was written with other settings ({', '.join(changed)} differ), so its tokens "
        "do not match this config. Point tokenized_path at a new folder, or delete the old one to re-tokenize."
    )


def _uri(path: str) -> str:
    if "://" in path:
        return path
    from pathlib import Path

    return str(Path(path).expanduser().absolute())
