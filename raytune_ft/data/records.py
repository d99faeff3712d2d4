"""Read dataset files as numbered raw records, choosing each row's split and copies as it is read.

Ray's own readers parse into Arrow columns, which loses the row number (so an error cannot say
where the bad row is), fails a whole file on one malformed JSON line, and forces one schema on
heterogeneous conversation rows. Here every row travels as its JSON text with its file and
1-based row number; parsing happens in the tokenizer actors. The read task also decides, by a
seeded hash of (file, row), whether a row belongs to the validation split and how many copies a
mixing rate asks for, so splits and mixing stream without a pass over the data. A dataset's
``num_samples`` needs its per-file row counts once; then each read task draws its file's share.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .sources import DataError, DatasetSource

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "RecordSelection", "Sampling", "Split", "first_records", "has_rows", "plan_sampling", "read_records",
    "require_rows", "row_fraction", "select_rows",
]  # fmt: skip

_BLOCK_ROWS = 256  # rows per read block, the unit the seeded block shuffle moves
Split = Literal["train", "eval", "all"]


@dataclass(frozen=True)
class Sampling:
    """Exactly ``num_samples`` rows of a dataset, as LLaMA-Factory draws them: every row ``whole``
    times, and ``num_samples mod rows`` distinct rows once more, drawn at random (seeded)."""

    whole: int
    """Copies every row gets: num_samples // rows."""
    extra: Mapping[str, int] = field(default_factory=dict)
    """Per file: how many of its rows get one more copy."""
    rows: Mapping[str, int] = field(default_factory=dict)
    """Per file: its row count (the draw needs it)."""
    seed: int = 0

    @property
    def total(self) -> int:
        """The rows the draw yields: num_samples."""
        return self.whole * sum(self.rows.values()) + sum(self.extra.values())


def plan_sampling(counts: Mapping[str, int], target: int, seed: int) -> Sampling:
    """How ``target`` rows are drawn from files holding ``counts`` rows: the extra rows are spread over
    the files as a draw without replacement from all of them would spread them."""
    import numpy as np

    paths = sorted(counts)
    total = sum(counts.values())
    whole, rest = divmod(target, total)
    drawn = [0] * len(paths)
    if rest:
        rng = np.random.default_rng([seed, target, total])
        drawn = [int(n) for n in rng.multivariate_hypergeometric([counts[p] for p in paths], rest)]
    return Sampling(whole, dict(zip(paths, drawn, strict=True)), dict(counts), seed)


@dataclass(frozen=True)
class RecordSelection:
    """Which rows a read keeps and how often."""

    split: Split = "all"
    """``train`` drops the validation rows, ``eval`` keeps only them, ``all`` keeps every row."""
    val_fraction: float = 0.0
    """Share of rows (by hash) that form the validation split."""
    rate: float = 1.0
    """Expected copies of each row (mixing): <1 subsamples, >1 repeats."""
    max_rows: int | None = None
    """Keep only rows numbered up to this, per file."""
    seed: int = 0
    sampling: Sampling | None = None
    """The dataset's ``num_samples`` draw; None keeps every row once."""


def row_fraction(seed: int, purpose: str, path: str, row: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, purpose, file, row): the same on every node and run."""
    digest = hashlib.blake2b(f"{seed}\0{purpose}\0{path}\0{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def copies(selection: RecordSelection, path: str, row: int) -> int:
    """How many times row ``row`` of ``path`` enters this read (0 drops it)."""
    if selection.max_rows is not None and row > selection.max_rows:
        return 0
    if selection.split != "all" and selection.val_fraction > 0:
        in_eval = row_fraction(selection.seed, "val", path, row) < selection.val_fraction
        if in_eval != (selection.split == "eval"):
            return 0
    elif selection.split == "eval":
        return 0
    whole = math.floor(selection.rate)
    if selection.rate == whole:  # no hash needed for whole copies (the usual rate 1.0)
        return whole
    return whole + int(row_fraction(selection.seed, "mix", path, row) < selection.rate - whole)


def read_records(
    paths: list[str],
    reader: str,
    selection: RecordSelection,
    num_cpus: float,
    extensions: tuple[str, ...] | None = None,
) -> Any:
    """Lazy Ray Dataset with columns ``path``, ``row`` and ``record`` (the row as JSON text);
    ``extensions`` limits which files of a folder are read."""
    import ray.data

    # One read task per file and no further splitting: blocks are the same on any cluster size, so the
    # seeded block shuffle, and with it a resumed run's data position, do not depend on free CPUs.
    return ray.data.read_datasource(
        _datasource(paths, reader, selection, extensions), num_cpus=num_cpus, override_num_blocks=len(paths)
    )


def has_rows(path: str, reader: str) -> bool:
    """Whether a local file holds at least one row (reads only its start)."""
    if Path(path).stat().st_size == 0:
        return False
    if reader == "json" and not path.endswith(".jsonl"):
        with open(path, "rb") as f:
            head = f.read(1 << 16).decode("utf-8", "ignore").lstrip()
        if head.startswith("["):  # a JSON array: empty when "]" follows
            return not head[1:].lstrip().startswith("]")
        if head:
            return True
    return bool(first_records(path, reader, 1))


def require_rows(source: DatasetSource) -> None:
    """Refuse a dataset whose local files hold no row, before anything is started on the cluster
    (remote URIs are not opened here: the row count before training finds them empty)."""
    paths = source.read_paths()
    if any("://" in p for p in paths):
        return
    files = [str(f) for p in paths for f in _local_files(Path(p))]
    if files and not any(has_rows(f, source.reader) for f in files):
        shown = files[0] if len(files) == 1 else f"its {len(files)} files ({', '.join(files[:3])}, ...)"
        raise DataError(f"dataset {source.name!r} is empty: {shown} hold(s) no row. {EMPTY_ADVICE}")


EMPTY_ADVICE = "Add rows, or take the dataset out of data.dataset."


def _local_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path] if path.is_file() else []


def first_records(path: str, reader: str, n: int) -> list[tuple[int, str]]:
    """The first ``n`` (row number, JSON text) records of one local file, read in this process (no Ray)."""
    kind = "jsonl" if reader == "json" and path.endswith(".jsonl") else reader
    with open(path, "rb") as f:
        rows = _ROW_READERS[kind](f, path)
        return [row for row, _ in zip(rows, range(n), strict=False)]


def _datasource(paths: list[str], reader: str, selection: RecordSelection, extensions: tuple[str, ...] | None) -> Any:
    from ray.data.datasource import FileBasedDatasource

    class RecordDatasource(FileBasedDatasource):  # type: ignore[misc]
        def _read_stream(self, f: pyarrow.NativeFile, path: str) -> Iterator[pyarrow.Table]:
            kind = "jsonl" if reader == "json" and path.endswith(".jsonl") else reader
            yield from _blocks(_ROW_READERS[kind](f, path), path, selection)

    return RecordDatasource(paths, file_extensions=list(extensions) if extensions else None)


def _sampled(rows: Iterator[tuple[int, str]], path: str, sampling: Sampling | None) -> Iterator[tuple[int, str, int]]:
    """(row, record, copies) with the file's share of the ``num_samples`` draw: selection sampling
    (Knuth's Algorithm S) picks exactly ``extra[path]`` of its rows, seeded by (seed, file)."""
    if sampling is None:
        yield from ((row, record, 1) for row, record in rows)
        return
    need, left = sampling.extra.get(path, 0), sampling.rows.get(path, 0)
    rng = random.Random(f"{sampling.seed}\0sample\0{path}")
    for row, record in rows:
        pick = need > 0 and rng.random() * left < need
        need, left = need - pick, left - 1
        yield row, record, sampling.whole + pick


def select_rows(rows: Iterator[tuple[int, str]], path: str, selection: RecordSelection) -> Iterator[tuple[int, str]]:
    """The (row, record) pairs of one file that a read keeps, each as often as ``selection`` says; what
    every read task applies to its file, in file order."""
    for row, record, sampled in _sampled(rows, path, selection.sampling):
        for _ in range(sampled * copies(selection, path, row) if sampled else 0):
            yield row, record


def _blocks(rows: Iterator[tuple[int, str]], path: str, selection: RecordSelection) -> Iterator[pyarrow.Table]:
    import pyarrow

    numbers: list[int] = []
    records: list[str] = []
    for row, record in select_rows(rows, path, selection):
        numbers.append(row)
        records.append(record)
        if len(numbers) >= _BLOCK_ROWS:
            yield pyarrow.table({"path": [path] * len(numbers), "row": numbers, "record": records})
            numbers, records = [], []
    if numbers:
        yield pyarrow.table({"path": [path] * len(numbers), "row": numbers, "record": records})


def _jsonl_rows(f: Any, path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for non-blank lines: a malformed line is found later, by its number."""
    for number, line in enumerate(io.TextIOWrapper(f, encoding="utf-8"), start=1):
        if line.strip():
            yield number, line.rstrip("\r\n")


def _json_rows(f: Any, path: str) -> Iterator[tuple[int, str]]:
    """A ``.json`` file holds one JSON array (or object) of rows, or JSON lines."""
    text = f.read().decode("utf-8")
    if not text.lstrip().startswith("["):
        yield from _jsonl_rows(io.BytesIO(text.encode("utf-8")), path)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}. Fix the file, or "
            "store one row per line (JSON lines) so that data.on_bad_rows: skip can pass over bad rows"
        ) from None
    for number, item in enumerate(data, start=1):
        yield number, json.dumps(item, ensure_ascii=False)


def _parquet_rows(f: Any, path: str) -> Iterator[tuple[int, str]]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(f).iter_batches(batch_size=_BLOCK_ROWS):
        for item in batch.to_pylist():
            number += 1
            yield number, json.dumps(item, ensure_ascii=False, default=str)


def _text_rows(f: Any, path: str) -> Iterator[tuple[int, str]]:
    """A ``.txt`` file: each non-blank line is one ``{"text": line}`` row (LLaMA-Factory's text loader)."""
    for number, line in enumerate(io.TextIOWrapper(f, encoding="utf-8"), start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield number, json.dumps({"text": text}, ensure_ascii=False)


def _arrow_rows(f: Any, path: str) -> Iterator[tuple[int, str]]:
    """An ``.arrow`` file in Arrow's stream format (as ``datasets`` saves shards) or file format."""
    import pyarrow

    data = pyarrow.py_buffer(f.read())
    try:
        batches: Any = pyarrow.ipc.open_stream(data)
    except pyarrow.ArrowInvalid:
        reader = pyarrow.ipc.open_file(data)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    number = 0
    for batch in batches:
        for item in batch.to_pylist():
            number += 1
            yield number, json.dumps(item, ensure_ascii=False, default=str)


def _csv_rows(f: Any, path: str) -> Iterator[tuple[int, str]]:
    import pyarrow
    import pyarrow.csv as pcsv

    try:
        batches = pcsv.open_csv(f)
    except pyarrow.ArrowInvalid as err:
        if "Empty CSV file" in str(err):
            return
        raise DataError(f"{path}: not a readable CSV file ({err})") from None
    number = 0
    for batch in batches:
        for item in batch.to_pylist():
            number += 1
            yield number, json.dumps(item, ensure_ascii=False, default=str)


_ROW_READERS = {
    "json": _json_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows, "csv": _csv_rows, "text": _text_rows,
    "arrow": _arrow_rows,
}  # fmt: skip
