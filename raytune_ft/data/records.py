"""Read dataset files as numbered raw records, choosing each row's split and copies as it is read.

Ray's own readers parse into Arrow columns, which loses the row number (so an error cannot say
where the bad row is), fails a whole file on one malformed JSON line, and forces one schema on
heterogeneous conversation rows. Here every row travels as its JSON text with its file and
1-based row number; parsing happens in the tokenizer actors. The read task also decides, by a
seeded hash of (file, row), whether a row belongs to the validation split and how many copies a
mixing rate asks for, so splits and mixing stream without a pass over the data.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .sources import DataError

if TYPE_CHECKING:
    import pyarrow

__all__ = ["RecordSelection", "Split", "first_records", "read_records", "row_fraction"]

_BLOCK_ROWS = 256  # rows per read block, the unit the seeded block shuffle moves
Split = Literal["train", "eval", "all"]


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


def read_records(paths: list[str], reader: str, selection: RecordSelection, num_cpus: float) -> Any:
    """Lazy Ray Dataset with columns ``path``, ``row`` and ``record`` (the row as JSON text)."""
    import ray.data

    # One read task per file and no further splitting: blocks are the same on any cluster size, so the
    # seeded block shuffle, and with it a resumed run's data position, do not depend on free CPUs.
    return ray.data.read_datasource(
        _datasource(paths, reader, selection), num_cpus=num_cpus, override_num_blocks=len(paths)
    )


def first_records(path: str, reader: str, n: int) -> list[tuple[int, str]]:
    """The first ``n`` (row number, JSON text) records of one local file, read in this process (no Ray)."""
    kind = "jsonl" if reader == "json" and path.endswith(".jsonl") else reader
    with open(path, "rb") as f:
        rows = _ROW_READERS[kind](f, path)
        return [row for row, _ in zip(rows, range(n), strict=False)]


def _datasource(paths: list[str], reader: str, selection: RecordSelection) -> Any:
    from ray.data.datasource import FileBasedDatasource

    class RecordDatasource(FileBasedDatasource):  # type: ignore[misc]
        def _read_stream(self, f: pyarrow.NativeFile, path: str) -> Iterator[pyarrow.Table]:
            kind = "jsonl" if reader == "json" and path.endswith(".jsonl") else reader
            yield from _blocks(_ROW_READERS[kind](f, path), path, selection)

    return RecordDatasource(paths)


def _blocks(rows: Iterator[tuple[int, str]], path: str, selection: RecordSelection) -> Iterator[pyarrow.Table]:
    import pyarrow

    numbers: list[int] = []
    records: list[str] = []
    for row, record in rows:
        n = copies(selection, path, row)
        numbers += [row] * n
        records += [record] * n
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


def _csv_rows(f: Any, path: str) -> Iterator[tuple[int, str]]:
    import pyarrow.csv as pcsv

    number = 0
    for batch in pcsv.open_csv(f):
        for item in batch.to_pylist():
            number += 1
            yield number, json.dumps(item, ensure_ascii=False, default=str)


_ROW_READERS = {"json": _json_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows, "csv": _csv_rows}
