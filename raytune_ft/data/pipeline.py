"""The Ray Data pipeline that feeds training workers: read -> normalise -> tokenize + mask.

It is built lazily on the driver and executed in a streaming fashion by Ray Data, so rows flow
from the files to the workers' ``get_dataset_shard("train")`` without passing through the
driver. Tokenization runs in an actor pool so each actor loads the tokenizer once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from raytune_ft.config import DataConfig

from .encode import Segment, encode_batch, render_segments
from .formats import normalize_row
from .sources import DataError, DatasetSource, resolve_datasets

if TYPE_CHECKING:
    import ray.data

__all__ = ["TokenizeConversations", "build_train_dataset"]

# Read tasks and tokenizer actors ask for half a CPU each, so one of each fits in the single CPU
# a small machine has left beside its training workers; at 1 CPU each the stream stalls
# ("backpressured: ResourceBudget") and the trainer waits forever.
_DATA_CPUS = 0.5


class TokenizeConversations:
    """Ray Data actor UDF: raw rows -> canonical messages -> ``input_ids`` + ``labels`` (prompt masked).

    Normalisation happens here too, in the same actor, rather than in a separate task stage: on a
    small machine every extra stage competes for the one spare CPU and the stream can stall.
    """

    def __init__(
        self,
        load_tokenizer: Callable[[], Any],
        cutoff_len: int,
        train_on_prompt: bool,
        mask_history: bool,
        placeholders: dict[str, str],
        sources: list[DatasetSource],
    ) -> None:
        self.tokenizer = load_tokenizer()
        self.cutoff_len = cutoff_len
        self.train_on_prompt = train_on_prompt
        self.mask_history = mask_history
        self.placeholders = placeholders
        self.sources = {str(source.path): source for source in sources}
        self._by_file: dict[str, DatasetSource | None] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        conversations = [self._conversation(batch, i) for i in range(len(batch["path"]))]
        encoded = [e for e in encode_batch(self.tokenizer, conversations, self.cutoff_len) if e is not None]
        return {
            "input_ids": [np.asarray(ids, dtype=np.int32) for ids, _ in encoded],
            "labels": [np.asarray(labels, dtype=np.int32) for _, labels in encoded],
        }

    def _conversation(self, batch: dict[str, np.ndarray], i: int) -> list[Segment]:
        """Row ``i`` normalised and rendered; errors name the file and the row."""
        path = str(batch["path"][i])
        row = {c: _plain(batch[c][i]) for c in batch if c != "path" and batch[c][i] is not None}
        try:
            messages = normalize_row(row, self.placeholders, path, self._source_of(path))
            return render_segments(self.tokenizer, messages, self.train_on_prompt, self.mask_history)
        except DataError as err:
            # The row's description is built only here: on the happy path it would cost a repr per row.
            problem = str(err).removeprefix(f"{path}: ")
            raise DataError(f"{path}: row {_describe(row)}: {problem}") from None

    def _source_of(self, path: str) -> DatasetSource | None:
        """The source a file belongs to (a source may be a folder of files), looked up once per file."""
        if path not in self._by_file:
            match = (s for root, s in self.sources.items() if path == root or path.startswith(root.rstrip("/") + "/"))
            self._by_file[path] = next(match, None)
        return self._by_file[path]


def build_train_dataset(
    cfg: DataConfig, load_tokenizer: Callable[[], Any], seed: int, concurrency: int
) -> ray.data.Dataset:
    """Lazy Ray Dataset of tokenized training rows for ``cfg.dataset``.

    ``load_tokenizer`` runs inside each tokenizer actor (on whichever node it lands), so it must be
    picklable and must resolve the model on that node.
    """
    import ray.data

    sources = resolve_datasets(cfg.dataset, cfg.dataset_dir)
    parts = [_read_source(source, cfg) for source in sources]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if cfg.shuffle:
        ds = ds.randomize_block_order(seed=seed)
    return ds.map_batches(
        TokenizeConversations,
        fn_constructor_kwargs={
            "load_tokenizer": load_tokenizer,
            "cutoff_len": cfg.cutoff_len,
            "train_on_prompt": cfg.train_on_prompt,
            "mask_history": cfg.mask_history,
            "placeholders": dict(cfg.placeholders),
            "sources": sources,
        },
        batch_size=256,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=_DATA_CPUS,
    )


def _read_source(source: DatasetSource, cfg: DataConfig) -> ray.data.Dataset:
    import ray.data

    read = {"json": ray.data.read_json, "parquet": ray.data.read_parquet, "csv": ray.data.read_csv}[source.reader]
    ds = read(str(source.path), include_paths=True, num_cpus=_DATA_CPUS)
    return ds.limit(cfg.max_samples) if cfg.max_samples is not None else ds


def _plain(value: Any) -> Any:
    """numpy/Arrow containers -> plain Python, so format checks see lists, dicts and str."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _describe(row: dict[str, Any]) -> str:
    text = repr(row)
    return text if len(text) <= 120 else text[:117] + "..."
