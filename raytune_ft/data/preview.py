"""``raytune-ft data preview``: what training will see, before any GPU time is spent.

The rows go through the very code training uses (read, normalise, render, tokenize, truncate),
on Ray Data, and only per-row statistics plus the first few samples come back to the driver:
rendered samples with the learned spans marked, token-length statistics, and how many rows were
bad, truncated or dropped. Bad rows are listed rather than fatal, since finding them is the point;
data that leaves nothing to train on (an empty file, every row bad or dropped) is an error, as in
training.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raytune_ft.config import DataConfig

from .encode import IGNORE_INDEX
from .media import MediaEncoder
from .packing import pack_samples, padding_efficiency
from .pipeline import (
    EncodeOptions,
    checked_sources,
    encode_rows,
    fit_to_cutoff,
    no_trainable_rows,
    read_sources,
    templated,
)
from .records import first_records, require_rows
from .sources import READERS, DataError, DatasetSource, resolve_datasets

__all__ = ["DescribeRows", "PreviewReport", "build_preview", "format_preview", "mark_learned", "render_samples"]

LEARN_OPEN, LEARN_CLOSE = "\u27e6", "\u27e7"
_SHOWN_PROBLEMS = 5
_PACK_WINDOW = 256


@dataclass
class PreviewReport:
    rows: int = 0
    """Rows read."""
    problems: list[str] = field(default_factory=list)
    """The first bad rows' problems (file, row, what is wrong)."""
    bad: int = 0
    dropped: int = 0
    """Rows whose first answer does not fit ``cutoff_len`` (nothing to learn)."""
    truncated: int = 0
    lengths: list[int] = field(default_factory=list)
    """Token length of each kept row after truncation."""
    learned_tokens: int = 0
    samples: list[tuple[str, int, list[int], list[int]]] = field(default_factory=list)
    """(file, row, input_ids, labels) of the first rows."""


class DescribeRows:
    """Ray Data actor UDF: raw records -> one statistics row per record (ids only for the first rows)."""

    def __init__(
        self,
        load_tokenizer: Callable[[], Any],
        options: EncodeOptions,
        sources: list[DatasetSource],
        keep: int,
        load_media: Callable[[], MediaEncoder | None] | None = None,
    ) -> None:
        self.tokenizer = templated(load_tokenizer(), options)
        self.options = options
        self.sources = sources
        self.keep = keep
        self.media = load_media() if load_media is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        rows = list(zip(batch["path"].tolist(), batch["row"].tolist(), batch["record"].tolist(), strict=True))
        out: dict[str, list[Any]] = {
            k: [] for k in ("path", "row", "problem", "length", "kept", "learned", "ids", "labels")
        }
        for result in encode_rows(self.tokenizer, self.options, self.sources, rows, self.media):
            ids, labels = result.input_ids or [], result.labels or []
            pieces = (
                fit_to_cutoff(self.options.stage, ids, labels, self.options.cutoff_len) if not result.problem else []
            )
            sample = pieces[0] if pieces and result.row <= self.keep else ([], [])
            out["path"].append(result.path)
            out["row"].append(result.row)
            out["problem"].append(result.problem)
            out["length"].append(len(ids))
            out["kept"].append(sum(len(piece_ids) for piece_ids, _ in pieces))
            out["learned"].append(sum(t != IGNORE_INDEX for _, piece_labels in pieces for t in piece_labels))
            out["ids"].append(np.asarray(sample[0], dtype=np.int32))
            out["labels"].append(np.asarray(sample[1], dtype=np.int32))
        return out


def build_preview(
    cfg: DataConfig,
    load_tokenizer: Callable[[], Any],
    concurrency: int,
    samples: int = 3,
    stage: str = "sft",
    seed: int = 0,
    sources: list[DatasetSource] | None = None,
    load_media: Callable[[], MediaEncoder | None] | None = None,
) -> PreviewReport:
    """Statistics over every row of ``cfg.dataset`` and the first ``samples`` rows in full; a
    ``DataError`` when the data leaves no row to train on. ``seed`` (``train.seed``) draws the rows of
    entries with ``num_samples`` as training does. ``sources``: ``cfg.dataset`` as ``checked_sources``
    already returned it (a caller that checked the data before starting Ray), so the registry, hub
    snapshots and files are not looked up twice; None checks them here. ``load_media``: the model's image
    processor, as training loads it (``build_datasets``)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    if sources is None:
        sources = checked_sources(cfg.dataset, cfg.dataset_dir, stage)
    reads = read_sources(cfg, sources, seed)
    ds = reads[0].union(*reads[1:]) if len(reads) > 1 else reads[0]
    described = ds.map_batches(
        DescribeRows,
        fn_constructor_kwargs={
            "load_tokenizer": load_tokenizer,
            "options": EncodeOptions.from_config(cfg, stage),
            "sources": sources,
            "keep": samples,
            "load_media": load_media,
        },
        batch_size=256,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=0.5,
    )
    report = PreviewReport()
    for batch in described.iter_batches(batch_size=1024, batch_format="numpy"):
        _add(report, batch)
    report.samples = sorted(report.samples)[:samples]
    _require_trainable(report, cfg, stage)
    return report


def _require_trainable(report: PreviewReport, cfg: DataConfig, stage: str) -> None:
    if report.lengths:
        return
    details = [
        f"Of {report.rows:,} rows read, {report.bad:,} are bad and {report.dropped:,} have no answer token "
        f"within data.cutoff_len {cfg.cutoff_len}.",
        *(f"bad row: {problem}" for problem in report.problems),
    ]
    raise no_trainable_rows(cfg, stage, "\n".join(details) + "\n")


def render_samples(cfg: DataConfig, tokenizer: Any, samples: int = 3, stage: str = "sft") -> list[tuple[str, int, str]]:
    """(file, row, text) of the first ``samples`` rows of each dataset's first file, rendered and
    tokenized in this process (no Ray): learned spans are marked, a bad row's text is its problem.
    A quick look for forms and the control panel; ``build_preview`` is the full pass."""
    options = EncodeOptions.from_config(cfg, stage)
    templated_tokenizer = templated(tokenizer, options)
    shown: list[tuple[str, int, str]] = []
    for source in resolve_datasets(cfg.dataset, cfg.dataset_dir):
        require_rows(source)
        path = _first_file(source)
        rows = [(path, row, record) for row, record in first_records(path, source.reader, samples)]
        for result in encode_rows(templated_tokenizer, options, [source], rows):
            if result.problem:
                shown.append((result.path, result.row, result.problem))
                continue
            pieces = fit_to_cutoff(options.stage, result.input_ids or [], result.labels or [], options.cutoff_len)
            text = mark_learned(templated_tokenizer, *pieces[0]) if pieces else "(no answer fits data.cutoff_len)"
            shown.append((result.path, result.row, text))
    return shown


def _first_file(source: DatasetSource) -> str:
    paths = source.read_paths()
    if not paths or "://" in paths[0]:
        raise DataError(f"dataset {source.name!r}: no local file to preview ({source.path})")
    folder = Path(paths[0])
    if not folder.is_dir():
        return paths[0]
    files = sorted(p for p in folder.rglob("*") if p.suffix in READERS)
    if not files:
        raise DataError(f"dataset {source.name!r}: {folder} holds no .json, .jsonl, .parquet or .csv file")
    return str(files[0])


def _add(report: PreviewReport, batch: dict[str, np.ndarray]) -> None:
    for i in range(len(batch["row"])):
        report.rows += 1
        problem = str(batch["problem"][i])
        if problem:
            report.bad += 1
            if len(report.problems) < _SHOWN_PROBLEMS:
                report.problems.append(problem)
            continue
        kept = int(batch["kept"][i])
        if kept == 0:
            report.dropped += 1
            continue
        report.truncated += int(batch["length"][i]) > kept
        report.lengths.append(kept)
        report.learned_tokens += int(batch["learned"][i])
        if len(batch["ids"][i]):
            ids, labels = batch["ids"][i].tolist(), batch["labels"][i].tolist()
            report.samples.append((str(batch["path"][i]), int(batch["row"][i]), ids, labels))


def format_preview(report: PreviewReport, tokenizer: Any, cfg: DataConfig, batch_size: int) -> str:
    """The preview as text: samples with learned spans marked, then the statistics."""
    lines = []
    for path, row, ids, labels in report.samples:
        lines += [f"--- {path} row {row} ({len(ids)} tokens; learned spans marked {LEARN_OPEN} {LEARN_CLOSE})"]
        lines += [mark_learned(tokenizer, ids, labels), ""]
    lines += _statistics(report, cfg, batch_size)
    return "\n".join(lines)


def mark_learned(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    """Decode ``ids`` with every run of learned tokens wrapped in the markers."""
    pieces: list[str] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            text = tokenizer.decode(ids[start:i], skip_special_tokens=False)
            pieces.append(f"{LEARN_OPEN}{text}{LEARN_CLOSE}" if labels[start] != IGNORE_INDEX else text)
            start = i
    return "".join(pieces)


def _statistics(report: PreviewReport, cfg: DataConfig, batch_size: int) -> list[str]:
    kept = len(report.lengths)
    lines = [
        f"rows read: {report.rows:,}; kept: {kept:,}; truncated to cutoff_len {cfg.cutoff_len}: {report.truncated:,}; "
        f"dropped (first answer beyond cutoff_len): {report.dropped:,}; bad rows: {report.bad:,}",
    ]
    if report.lengths:
        ordered = sorted(report.lengths)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        lines.append(
            f"tokens per row: min {ordered[0]}, median {statistics.median(ordered):g}, p95 {p95}, max {ordered[-1]}; "
            f"total {sum(ordered):,}, learned {report.learned_tokens:,}"
        )
        lines.append(_packing_line(report.lengths, cfg.cutoff_len, batch_size))
    for problem in report.problems:
        lines.append(f"bad row: {problem}")
    if report.bad > len(report.problems):
        lines.append(f"... and {report.bad - len(report.problems)} more bad rows")
    if report.bad and cfg.on_bad_rows == "error":
        lines.append("training stops at the first bad row; set data.on_bad_rows: skip to leave them out")
    return lines


def _packing_line(lengths: list[int], cutoff_len: int, batch_size: int) -> str:
    plain = padding_efficiency(lengths, batch_size)
    # Packing works on each tokenizer batch of rows, as in the pipeline.
    packed_lengths = [
        len(ids)
        for start in range(0, len(lengths), _PACK_WINDOW)
        for ids, _, _ in pack_samples([([0] * n, [0] * n) for n in lengths[start : start + _PACK_WINDOW]], cutoff_len)
    ]
    packed = padding_efficiency(packed_lengths, batch_size)
    return (
        f"padding efficiency at batch size {batch_size}: {plain:.1%} unpacked; {packed:.1%} with data.packing "
        f"({len(lengths):,} rows -> {len(packed_lengths):,} packed rows)"
    )
