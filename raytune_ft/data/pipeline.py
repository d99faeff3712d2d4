"""The Ray Data pipeline that feeds training workers: read -> normalise -> tokenize + mask -> pack.

It is built lazily on the driver and executed in a streaming fashion by Ray Data, so rows flow
from the files to the workers' ``get_dataset_shard`` without passing through the driver.
Normalisation, rendering, tokenization and packing run in one map stage of Ray tasks (at most
``concurrency`` at once): on a small machine every extra stage competes for the one spare CPU and
the stream can stall. Tasks, not actors: they run in Ray's already started worker processes, and
each process keeps its tokenizer between tasks, so the first rows arrive seconds sooner than from
actors that each start a process (bench/tokenize_throughput.py).
"""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from raytune_ft.config import DataConfig

from .encode import IGNORE_INDEX, Segment, encode_full, render_segments, truncate
from .formats import normalize_example
from .media import MediaEncoder, with_images
from .packing import pack_samples
from .records import EMPTY_ADVICE, RecordSelection, Sampling, Split, plan_sampling, read_records, require_rows
from .sources import DataError, DatasetSource, check_row_format, resolve_datasets
from .templates import TemplateOptions, apply_template, prompt_answer_segments, template_options, template_segments

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "DATA_TASK_CPUS",
    "EncodeOptions",
    "PreparedData",
    "TokenizeRows",
    "build_datasets",
    "build_train_dataset",
    "checked_sources",
    "count_rows",
    "encode_rows",
    "file_counts",
    "mixing_rates",
    "no_trainable_rows",
    "read_sources",
    "samplings",
]

# Read and tokenizer tasks ask for half a CPU each, so one of each fits in the single CPU
# a small machine has left beside its training workers; at 1 CPU each the stream stalls
# ("backpressured: ResourceBudget") and the trainer waits forever.
DATA_TASK_CPUS = 0.5
_BATCH_ROWS = 256
_LOGGED_BAD_ROWS = 10


@dataclass(frozen=True)
class EncodeOptions:
    """How rows become token rows; the subset of ``DataConfig`` the tokenizer actors need."""

    cutoff_len: int
    template: str | None = None
    """Named chat template installed on the tokenizer (``data.template``); None keeps its own."""
    stage: str = "sft"
    """The row format (``method.rows``): ``sft`` renders conversations with the chat template, ``pt``
    learns plain text, ``preference`` renders the prompt with the chosen and with the rejected answer,
    ``kto`` renders the labelled conversation and a mismatched one (its prompt with the next row's
    answer) for KTO's KL estimate."""
    train_on_prompt: bool = False
    mask_history: bool = False
    placeholders: Mapping[str, str] = field(default_factory=dict)
    packing: bool = False
    skip_bad_rows: bool = False
    template_options: TemplateOptions = field(default_factory=TemplateOptions)
    """How the named template encodes (thinking, tool format, default system)."""

    @classmethod
    def from_config(cls, cfg: DataConfig, stage: str = "sft") -> EncodeOptions:
        return cls(
            cutoff_len=cfg.cutoff_len,
            template=cfg.template,
            stage=stage,
            train_on_prompt=cfg.train_on_prompt,
            mask_history=cfg.mask_history,
            placeholders=dict(cfg.placeholders),
            packing=cfg.packing,
            skip_bad_rows=cfg.on_bad_rows == "skip",
            template_options=template_options(cfg),
        )


@dataclass(frozen=True)
class RowResult:
    """One source row after encoding: token ids and labels (untruncated), or why it failed."""

    path: str
    row: int
    input_ids: list[int] | None = None
    labels: list[int] | None = None
    problem: str = ""
    more: tuple[tuple[list[int], list[int]], ...] = ()
    """The row's other sequences: a pair's rejected answer, or a KTO row's mismatched (KL) one."""
    label: bool | None = None
    """A KTO row's label: True for a desirable answer."""
    answer: str | None = None
    """An online-RL row's ground truth."""
    media: Mapping[str, np.ndarray] | None = None
    """A row's image arrays, as the vision-language model's processor made them (``with_images``)."""


def templated(tokenizer: Any, options: EncodeOptions) -> Any:
    """``tokenizer`` with the run's named template installed (when one is set)."""
    if not options.template:
        return tokenizer
    return apply_template(tokenizer, options.template, options.template_options, options.train_on_prompt)


def encode_rows(
    tokenizer: Any,
    options: EncodeOptions,
    sources: list[DatasetSource],
    rows: list[tuple[str, int, str]],
    media: MediaEncoder | None = None,
) -> list[RowResult]:
    """Parse, normalise, render and tokenize ``(path, row, json_text)`` rows (one tokenizer call); ``media``:
    a vision-language model's processor, which turns the rows' images into tokens and arrays."""
    owners = {path: _owner(sources, path) for path in {path for path, _, _ in rows}}  # once per file, not per row
    examples: list[dict[str, Any] | str] = []
    for path, row, record in rows:
        try:
            fields = _parse(record, path, row)
            normalized = normalize_example(fields, options.stage, options.placeholders, f"{path}: row {row}",
                                           owners[path])  # fmt: skip
            examples.append(with_images(normalized, media, options.stage, f"{path}: row {row}"))
        except DataError as err:
            examples.append(_located(str(err), path, row))
    if options.stage == "kto":
        _add_mismatched_answers([e for e in examples if isinstance(e, dict)])
    results: list[RowResult] = []
    rendered: list[list[Segment]] = []
    for (path, row, _), example in zip(rows, examples, strict=True):
        try:
            if isinstance(example, str):
                raise DataError(example)
            conversations = _SEGMENTS[options.stage](tokenizer, example, options)
            rendered += conversations
            results.append(RowResult(path, row, more=tuple(([], []) for _ in conversations[1:]),
                                     label=example.get("label"), answer=example.get("answer"),
                                     media=example.get("media")))  # fmt: skip
        except DataError as err:
            results.append(RowResult(path, row, problem=_located(str(err), path, row)))
    encoded = iter(encode_full(tokenizer, rendered))
    for i, result in enumerate(results):
        if not result.problem:
            ids, labels = next(encoded)
            more = tuple(next(encoded) for _ in result.more)
            results[i] = RowResult(
                result.path,
                result.row,
                ids,
                labels,
                more=more,
                label=result.label,
                answer=result.answer,
                media=result.media,
            )
    return results


def _add_mismatched_answers(examples: list[dict[str, Any]]) -> None:
    """KTO's KL reference point z0 is estimated on mismatched pairs (Ethayarajh et al. 2024, sec. 4.1):
    each row's prompt with the next row's answer (the last one's with the first's)."""
    for example, neighbour in zip(examples, examples[1:] + examples[:1], strict=True):
        example["mismatched"] = neighbour["messages"][-1]


class TokenizeRows:
    """Numbered raw records -> ``input_ids`` + ``labels`` (+ ``position_ids`` when packing), with the
    tokenizer loaded once; one per worker process and pipeline (``tokenize_task``).

    A bad row stops the run with its file and row number, or with ``skip_bad_rows`` is logged and
    left out. A row whose first answer does not fit in ``cutoff_len`` is dropped (nothing to learn).
    """

    def __init__(
        self,
        load_tokenizer: Callable[[], Any],
        options: EncodeOptions,
        sources: list[DatasetSource],
        load_media: Callable[[], MediaEncoder | None] | None = None,
    ) -> None:
        self.tokenizer = templated(load_tokenizer(), options)
        self.options = options
        self.sources = sources
        self.media = load_media() if load_media is not None else None
        self.skipped = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        rows = list(zip(batch["path"].tolist(), batch["row"].tolist(), batch["record"].tolist(), strict=True))
        results = []
        for result in encode_rows(self.tokenizer, self.options, self.sources, rows, self.media):
            if result.problem:
                self._reject(result.problem)
                continue
            results.append(result)
        if self.options.stage in _SCORED_ROWS:
            return _SCORED_ROWS[self.options.stage](results, self.options.cutoff_len)
        if self.media is not None:
            return self._media_columns(results, self.media.image_token_id)
        samples = [
            sample
            for r in results
            for sample in fit_to_cutoff(self.options.stage, r.input_ids or [], r.labels or [], self.options.cutoff_len)
        ]
        if self.options.packing:
            return _packed_columns(pack_samples(samples, self.options.cutoff_len))
        return {
            "input_ids": [np.asarray(ids, dtype=np.int32) for ids, _ in samples],
            "labels": [np.asarray(labels, dtype=np.int32) for _, labels in samples],
        }

    def _media_columns(self, results: list[RowResult], image_token: int) -> dict[str, Any]:
        """A vision-language model's rows: truncated as any row (never through an image's tokens, which are
        never learned), each with its image arrays pickled in ``media`` (empty for a row without images)."""
        if self.options.packing:
            raise DataError("data.packing: rows for a vision-language model are not packed; set data.packing: false")
        ids_column, labels_column, media_column = [], [], []
        for r in results:
            ids, labels = np.asarray(r.input_ids, dtype=np.int32), np.asarray(r.labels, dtype=np.int32)
            labels[ids == image_token] = IGNORE_INDEX
            cutoff = self.options.cutoff_len
            for kept, kept_labels in fit_to_cutoff(self.options.stage, ids.tolist(), labels.tolist(), cutoff):
                if (np.asarray(kept) == image_token).sum() != (ids == image_token).sum():
                    self._reject(
                        f"{r.path}: row {r.row}: its image tokens do not fit in data.cutoff_len "
                        f"{self.options.cutoff_len} ({len(ids)} tokens in all); raise cutoff_len or lower "
                        "data.image_max_pixels"
                    )
                    continue
                ids_column.append(np.asarray(kept, dtype=np.int32))
                labels_column.append(np.asarray(kept_labels, dtype=np.int32))
                media_column.append(pickle.dumps(dict(r.media)) if r.media else b"")
        return {"input_ids": ids_column, "labels": labels_column, "media": media_column}

    def _reject(self, problem: str) -> None:
        if not self.options.skip_bad_rows:
            raise DataError(problem)
        self.skipped += 1
        if self.skipped <= _LOGGED_BAD_ROWS or self.skipped % 100 == 0:
            print(f"raytune_ft: skipped bad row ({self.skipped} skipped by this process): {problem}", flush=True)


_WORKERS: OrderedDict[bytes, TokenizeRows] = OrderedDict()
_KEPT_WORKERS = 4


def tokenize_task(batch: dict[str, np.ndarray], setup: bytes) -> dict[str, Any]:
    """Ray Data task UDF: ``TokenizeRows`` for ``setup`` (the pickled loaders, options and sources).

    The first task of a pipeline in a worker process loads the tokenizer; later ones reuse it. A
    process keeps the few most recent pipelines' tokenizers (sweeps run several in one job).
    """
    worker = _WORKERS.pop(setup, None) or TokenizeRows(*pickle.loads(setup))
    _WORKERS[setup] = worker
    while len(_WORKERS) > _KEPT_WORKERS:
        _WORKERS.popitem(last=False)
    return worker(batch)


@dataclass(frozen=True)
class PreparedData:
    """The tokenized streams training consumes."""

    train: Any
    """Lazy ``ray.data.Dataset`` of training rows."""
    eval: Any | None = None
    """Validation rows (small; materialised), or None without a validation split."""


def build_datasets(
    cfg: DataConfig,
    load_tokenizer: Callable[[], Any],
    seed: int,
    concurrency: int,
    stage: str = "sft",
    load_media: Callable[[], MediaEncoder | None] | None = None,
) -> PreparedData:
    """Training (and validation) datasets for ``cfg``, tokenized by at most ``concurrency`` tasks at once.

    ``load_tokenizer`` runs inside the worker processes (on whichever node they are), so it must be
    picklable, must resolve the model on that node, and should import little (the first rows come
    sooner): ``functools.partial(raytune_ft.models.load_row_tokenizer, source)``. ``data.template``
    is applied to what it returns. ``load_media`` likewise loads a vision-language model's processor for
    rows with images (``raytune_ft.models.load_image_encoder``; it returns None for a text model).
    """
    sources = checked_sources(cfg.dataset, cfg.dataset_dir, stage)
    options = EncodeOptions.from_config(cfg, stage)
    draws = samplings(sources, cfg.max_samples, seed)
    # Interleaving and a row-count val_size need each source's size: read it once, for both.
    counted = cfg.mix_strategy != "concat" or cfg.val_size >= 1
    counts = [_size(s, d, cfg.max_samples, seed) for s, d in zip(sources, draws, strict=True)] if counted else []
    rates = _mixing_rates(cfg, sources, counts)
    val_fraction = _val_fraction(cfg, counts)
    split: Split = "train" if val_fraction else "all"
    reads = [
        _read(source, _selection(cfg, seed, draw, split, val_fraction, rate))
        for source, draw, rate in zip(sources, draws, rates, strict=True)
    ]
    encoders = (load_tokenizer, load_media)
    train = _tokenized(reads, sources, options, encoders, concurrency, shuffle_seed=seed if cfg.shuffle else None)
    evaluation = None
    if cfg.eval_dataset:
        eval_sources = checked_sources(cfg.eval_dataset, cfg.dataset_dir, stage)
        reads = read_sources(cfg, eval_sources, seed)
        evaluation = _tokenized(reads, eval_sources, options, encoders, concurrency, shuffle_seed=None)
    elif val_fraction:
        reads = [_read(s, _selection(cfg, seed, d, "eval", val_fraction)) for s, d in zip(sources, draws, strict=True)]
        evaluation = _tokenized(reads, sources, options, encoders, concurrency, shuffle_seed=None)
    return PreparedData(train=train, eval=evaluation)


def checked_sources(names: list[str], dataset_dir: str | None, stage: str) -> list[DatasetSource]:
    """Resolved datasets that fit ``stage`` and hold rows: checked on the driver, before any Ray task."""
    sources = resolve_datasets(names, dataset_dir)
    check_row_format(sources, stage)
    for source in sources:
        require_rows(source)
    return sources


def read_sources(cfg: DataConfig, sources: list[DatasetSource], seed: int) -> list[ray.data.Dataset]:
    """Each source's raw records, whole (no validation split, no mixing): its ``num_samples`` draw, or its
    first ``max_samples`` rows, as training reads them."""
    draws = samplings(sources, cfg.max_samples, seed)
    return [_read(source, _selection(cfg, seed, draw)) for source, draw in zip(sources, draws, strict=True)]


def _selection(
    cfg: DataConfig, seed: int, draw: Sampling | None, split: Split = "all", val_fraction: float = 0.0,
    rate: float = 1.0,
) -> RecordSelection:  # fmt: skip
    # LLaMA-Factory applies max_samples after num_samples' draw, to the drawn rows (see samplings).
    max_rows = None if draw is not None else cfg.max_samples
    return RecordSelection(split, val_fraction, rate, max_rows, seed, sampling=draw)


def samplings(sources: list[DatasetSource], max_samples: int | None, seed: int) -> list[Sampling | None]:
    """Each source's ``num_samples`` draw (None for sources without one), capped at ``max_samples``
    rows, as LLaMA-Factory cuts its drawn rows to max_samples. Counts the rows of those sources."""
    draws: list[Sampling | None] = []
    for source in sources:
        if source.num_samples is None:
            draws.append(None)
            continue
        counts = file_counts(source, seed)
        if not sum(counts.values()):
            raise DataError(f"dataset {source.name!r} is empty: {source.path} holds no row. {EMPTY_ADVICE}")
        target = min(source.num_samples, max_samples or source.num_samples)
        draws.append(plan_sampling(counts, target, seed))
    return draws


def _size(source: DatasetSource, draw: Sampling | None, max_samples: int | None, seed: int) -> int:
    return draw.total if draw is not None else count_rows(source, max_samples, seed)


def build_train_dataset(
    cfg: DataConfig, load_tokenizer: Callable[[], Any], seed: int, concurrency: int, stage: str = "sft"
) -> ray.data.Dataset:
    """The training stream alone (no validation split)."""
    train: ray.data.Dataset = build_datasets(
        cfg.model_copy(update={"val_size": 0.0, "eval_dataset": None}), load_tokenizer, seed, concurrency, stage
    ).train
    return train


def _tokenized(
    reads: list[Any],
    sources: list[DatasetSource],
    options: EncodeOptions,
    encoders: tuple[Callable[[], Any], Callable[[], MediaEncoder | None] | None],
    concurrency: int,
    shuffle_seed: int | None,
) -> Any:
    import ray.data

    ds = reads[0].union(*reads[1:]) if len(reads) > 1 else reads[0]
    if shuffle_seed is not None:
        ds = ds.randomize_block_order(seed=shuffle_seed)
    return ds.map_batches(
        tokenize_task,
        fn_args=(pickle.dumps((encoders[0], options, sources, encoders[1])),),
        batch_size=_BATCH_ROWS,
        compute=ray.data.TaskPoolStrategy(size=concurrency),
        num_cpus=DATA_TASK_CPUS,
    )


def _read(source: DatasetSource, selection: RecordSelection) -> Any:
    return read_records(
        source.read_paths(), source.reader, selection, num_cpus=DATA_TASK_CPUS, extensions=source.extensions
    )


def count_rows(source: DatasetSource, max_rows: int | None, seed: int) -> int:
    """Rows a source holds (reads the files on the cluster; nothing comes to the driver)."""
    return int(_read(source, RecordSelection(max_rows=max_rows, seed=seed)).count())


def file_counts(source: DatasetSource, seed: int) -> dict[str, int]:
    """Rows of each file of a source, as the reader names the files (counted on the cluster; only
    one (file, count) pair per block comes to the driver)."""
    counts: dict[str, int] = {}
    per_block = _read(source, RecordSelection(seed=seed)).map_batches(
        _count_paths, batch_format="pyarrow", batch_size=None, num_cpus=DATA_TASK_CPUS
    )
    for row in per_block.iter_rows():
        counts[row["path"]] = counts.get(row["path"], 0) + int(row["n"])
    return counts


def _count_paths(block: Any) -> Any:
    import pyarrow
    import pyarrow.compute as pc

    counted = pc.value_counts(block["path"].combine_chunks())
    return pyarrow.table({"path": counted.field("values"), "n": counted.field("counts")})


def no_trainable_rows(cfg: DataConfig, stage: str, details: str = "") -> DataError:
    """The error for data that leaves no row to train on once encoded (every row bad and skipped,
    or no answer token within ``cutoff_len``); ``details`` says which, when known."""
    skipped = " (data.on_bad_rows: skip left out the bad ones)" if cfg.on_bad_rows == "skip" else ""
    why = details or "See why with `raytune-ft data preview CONFIG`."
    return DataError(
        f"no trainable row in data.dataset {', '.join(cfg.dataset)}: every row was dropped while encoding{skipped}, "
        f"or no answer token fits data.cutoff_len {cfg.cutoff_len}. {why} Fix or replace the rows, raise "
        f"data.cutoff_len, or check that method.stage ({stage} rows) fits the data."
    )


def _mixing_rates(cfg: DataConfig, sources: list[DatasetSource], counts: list[int]) -> list[float]:
    if cfg.mix_strategy == "concat":
        return [1.0] * len(sources)
    for source, n in zip(sources, counts, strict=True):
        if n == 0:
            raise DataError(f"dataset {source.name!r} is empty; interleaving needs rows from every dataset")
    return mixing_rates(counts, cfg.interleave_probs, cfg.mix_strategy)


def mixing_rates(counts: list[int], probs: list[float] | None, strategy: str) -> list[float]:
    """Expected copies of each row per dataset, so that the mix follows ``probs``.

    interleave_under stops when the first dataset runs out: total T = min_i n_i / p_i, and
    dataset i gives p_i * T rows. interleave_over stops when the last runs out (max instead of min).
    """
    shares = probs or [1.0] * len(counts)
    shares = [p / sum(shares) for p in shares]
    ratios = [n / p for n, p in zip(counts, shares, strict=True)]
    total = min(ratios) if strategy == "interleave_under" else max(ratios)
    return [p * total / n for p, n in zip(shares, counts, strict=True)]


def _val_fraction(cfg: DataConfig, counts: list[int]) -> float:
    if cfg.val_size < 1:
        return cfg.val_size
    total = sum(counts)
    if cfg.val_size >= total:
        raise DataError(f"data.val_size {cfg.val_size:g} rows is not below the {total} rows of data.dataset")
    return cfg.val_size / total


def _chat_segments(tokenizer: Any, example: dict[str, Any], options: EncodeOptions) -> list[Segment]:
    messages, tools = example["messages"], example.get("tools", "")
    if options.template:
        return template_segments(tokenizer, options.template, messages, tools, train_on_prompt=options.train_on_prompt,
                                 mask_history=options.mask_history, options=options.template_options)  # fmt: skip
    _refuse_tools(messages, tools)
    return render_segments(tokenizer, messages, options.train_on_prompt, options.mask_history)


def _refuse_tools(messages: list[dict[str, str]], tools: str) -> None:
    """The tokenizer's own Jinja renders tool calls its own way (if at all); LLaMA-Factory's tool rows
    need a named template, whose tool format they are written in."""
    if tools or any(m["role"] in ("function", "observation") for m in messages):
        raise DataError(
            "the row has tool definitions or function-call/observation turns; those are rendered by a named chat "
            "template's tool format: set data.template (e.g. qwen3 for Qwen3 models; data.tool_format picks "
            "another tool format)"
        )


def _text_segments(tokenizer: Any, example: dict[str, Any], options: EncodeOptions) -> list[Segment]:
    return [(example["text"] + tokenizer.eos_token, True)]


def _answered(messages: list[dict[str, str]], answer: str | dict[str, str]) -> list[dict[str, str]]:
    return [*messages, answer if isinstance(answer, dict) else {"role": "assistant", "content": answer}]


def _scored_segments(
    tokenizer: Any, messages: list[dict[str, str]], tools: str, options: EncodeOptions
) -> list[Segment]:
    """A prompt and one scored answer: only the final answer is learned (the prompt and any history are context)."""
    if options.template:
        return prompt_answer_segments(tokenizer, options.template, messages, tools, options.template_options)
    _refuse_tools(messages, tools)
    return render_segments(tokenizer, messages, False, mask_history=True)


def _pair_segments(tokenizer: Any, example: dict[str, Any], options: EncodeOptions) -> list[list[Segment]]:
    tools = example.get("tools", "")
    return [
        _scored_segments(tokenizer, _answered(example["messages"], example[side]), tools, options)
        for side in ("chosen", "rejected")
    ]


def _kto_segments(tokenizer: Any, example: dict[str, Any], options: EncodeOptions) -> list[list[Segment]]:
    messages, tools = example["messages"], example.get("tools", "")
    return [
        _scored_segments(tokenizer, messages, tools, options),
        _scored_segments(tokenizer, _answered(messages[:-1], example["mismatched"]), tools, options),
    ]


_SEGMENTS: dict[str, Callable[[Any, dict[str, Any], EncodeOptions], list[list[Segment]]]] = {
    "sft": lambda tokenizer, example, options: [_chat_segments(tokenizer, example, options)],
    "pt": lambda tokenizer, example, options: [_text_segments(tokenizer, example, options)],
    "preference": _pair_segments,
    "kto": _kto_segments,
    "prompt": lambda tokenizer, example, options: [
        _scored_segments(
            tokenizer, _answered(example["messages"], example["answer"]), example.get("tools", ""), options
        )
    ],
}


def _ids(rows: list[list[int]]) -> list[np.ndarray]:
    return [np.asarray(row, dtype=np.int32) for row in rows]


def _pair_columns(results: list[RowResult], cutoff_len: int) -> dict[str, Any]:
    """Pairs whose chosen and rejected answers both keep a token after truncation to ``cutoff_len``."""
    kept = []
    for r in results:
        chosen, rejected = truncate(r.input_ids or [], r.labels or [], cutoff_len), truncate(*r.more[0], cutoff_len)
        if chosen is not None and rejected is not None:
            kept.append((chosen, rejected))
    return {
        "input_ids": _ids([c[0] for c, _ in kept]), "labels": _ids([c[1] for c, _ in kept]),
        "rejected_input_ids": _ids([r[0] for _, r in kept]), "rejected_labels": _ids([r[1] for _, r in kept]),
    }  # fmt: skip


def _kto_columns(results: list[RowResult], cutoff_len: int) -> dict[str, Any]:
    """Labelled answers (and their mismatched KL sequences) that keep a token after truncation."""
    kept = []
    for r in results:
        answer, mismatched = truncate(r.input_ids or [], r.labels or [], cutoff_len), truncate(*r.more[0], cutoff_len)
        if answer is not None and mismatched is not None:
            kept.append((answer, mismatched, bool(r.label)))
    return {
        "input_ids": _ids([a[0] for a, _, _ in kept]), "labels": _ids([a[1] for a, _, _ in kept]),
        "kl_input_ids": _ids([m[0] for _, m, _ in kept]), "kl_labels": _ids([m[1] for _, m, _ in kept]),
        "kto_label": np.asarray([label for _, _, label in kept], dtype=np.bool_),
    }  # fmt: skip


def _prompt_end(labels: list[int], cutoff_len: int) -> int | None:
    """Where a prompt row's answer starts (its first labelled token), if the prompt before it fits ``cutoff_len``."""
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
    return start if start is not None and 0 < start <= cutoff_len else None


def _prompt_columns(results: list[RowResult], cutoff_len: int) -> dict[str, Any]:
    """Prompts (the rendered conversation up to where the answer starts, generation prompt included) of at
    most ``cutoff_len`` tokens, and their ground truths."""
    kept = []
    for r in results:
        start = _prompt_end(r.labels or [], cutoff_len)
        if start is not None:
            kept.append(((r.input_ids or [])[:start], r.answer or ""))
    return {"prompt_ids": _ids([ids for ids, _ in kept]), "answer": np.asarray([a for _, a in kept], dtype=object)}


_SCORED_ROWS: dict[str, Callable[[list[RowResult], int], dict[str, Any]]] = {
    "preference": _pair_columns,
    "kto": _kto_columns,
    "prompt": _prompt_columns,
}
"""Row formats scored as whole sequences: columns per format (never packed or split)."""


Sample = tuple[list[int], list[int]]


def _truncated(ids: list[int], labels: list[int], cutoff_len: int) -> list[Sample]:
    kept = truncate(ids, labels, cutoff_len)
    return [kept] if kept is not None else []


def _split(ids: list[int], labels: list[int], cutoff_len: int) -> list[Sample]:
    return [(ids[i : i + cutoff_len], labels[i : i + cutoff_len]) for i in range(0, len(ids), cutoff_len)]


def _prompt_fit(ids: list[int], labels: list[int], cutoff_len: int) -> list[Sample]:
    """A prompt row whose prompt fits, as one sample: the prompt, then its ground truth as the labelled part
    (what ``data preview`` shows; training keeps the prompt alone, ``_prompt_columns``)."""
    return [(ids, labels)] if _prompt_end(labels, cutoff_len) is not None else []


_FITS: dict[str, Callable[[list[int], list[int], int], list[Sample]]] = {
    "sft": _truncated, "pt": _split, "preference": _truncated, "kto": _truncated, "prompt": _prompt_fit,
}  # fmt: skip


def fit_to_cutoff(stage: str, ids: list[int], labels: list[int], cutoff_len: int) -> list[Sample]:
    """Rows of at most ``cutoff_len`` tokens: a conversation keeps its start (and is dropped when no
    answer token is left); a pre-training document is split into consecutive pieces."""
    return _FITS[stage](ids, labels, cutoff_len)


def _parse(record: str, path: str, row: int) -> dict[str, Any]:
    try:
        value = json.loads(record)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: row {row}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: row {row}: expected a JSON object, got {type(value).__name__}")
    return {key: item for key, item in value.items() if item is not None}


def _owner(sources: list[DatasetSource], path: str) -> DatasetSource | None:
    return next((source for source in sources if source.owns(path)), None)


def _located(problem: str, path: str, row: int) -> str:
    """Every problem names its file and row, whichever layer raised it."""
    prefix = f"{path}: row {row}"
    return problem if problem.startswith(prefix) else f"{prefix}: {problem.removeprefix(f'{path}: ')}"


def _packed_columns(blocks: list[tuple[list[int], list[int], list[int]]]) -> dict[str, Any]:
    return {
        "input_ids": [np.asarray(ids, dtype=np.int32) for ids, _, _ in blocks],
        "labels": [np.asarray(labels, dtype=np.int32) for _, labels, _ in blocks],
        "position_ids": [np.asarray(pos, dtype=np.int32) for _, _, pos in blocks],
    }
