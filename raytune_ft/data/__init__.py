"""Data stage: dataset sources, normalisation to chat messages, template rendering, tokenization
with label masks, packing, and the Ray Data pipeline that streams it all to training workers."""

from .collate import SCORED_SEQUENCES, balanced_groups, pack_batch, pad_batch, pad_scored, token_runs
from .encode import IGNORE_INDEX, encode_batch, encode_full, render_segments, truncate
from .formats import fill_placeholders, normalize_example, normalize_row
from .packing import pack_samples, padding_efficiency
from .pipeline import (
    DATA_TASK_CPUS,
    EncodeOptions,
    PreparedData,
    build_datasets,
    build_train_dataset,
    encode_rows,
    no_trainable_rows,
)
from .records import RecordSelection, read_records
from .sources import BUILTIN_DATASETS, DataError, DatasetSource, dataset_names, resolve_datasets

__all__ = [
    "BUILTIN_DATASETS",
    "DATA_TASK_CPUS",
    "IGNORE_INDEX",
    "SCORED_SEQUENCES",
    "DataError",
    "DatasetSource",
    "EncodeOptions",
    "PreparedData",
    "RecordSelection",
    "balanced_groups",
    "build_datasets",
    "build_train_dataset",
    "dataset_names",
    "encode_batch",
    "encode_full",
    "encode_rows",
    "fill_placeholders",
    "no_trainable_rows",
    "normalize_example",
    "normalize_row",
    "pack_batch",
    "pack_samples",
    "pad_batch",
    "pad_scored",
    "padding_efficiency",
    "read_records",
    "render_segments",
    "resolve_datasets",
    "token_runs",
    "truncate",
]
