"""Data stage: dataset sources, normalisation to chat messages, template rendering, tokenization
with label masks, and the Ray Data pipeline that streams it all to training workers."""

from .collate import pad_batch
from .encode import IGNORE_INDEX, encode_batch, render_segments
from .formats import fill_placeholders, normalize_row
from .pipeline import build_train_dataset
from .sources import BUILTIN_DATASETS, DataError, resolve_datasets

__all__ = [
    "BUILTIN_DATASETS",
    "IGNORE_INDEX",
    "DataError",
    "build_train_dataset",
    "encode_batch",
    "fill_placeholders",
    "normalize_row",
    "pad_batch",
    "render_segments",
    "resolve_datasets",
]
