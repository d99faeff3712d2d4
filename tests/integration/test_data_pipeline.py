"""The Ray Data pipeline on a local Ray: row-numbered errors and skipping, validation splits,
interleaved mixing, globs, packing, and the tokenized-dataset cache."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raytune_ft.config import DataConfig
from raytune_ft.data import IGNORE_INDEX, DataError, PreparedData, build_datasets
from raytune_ft.data.cache import data_fingerprint, load_or_write
from raytune_ft.train import training_tokenizer

pytestmark = pytest.mark.integration


def write_rows(path: Path, n: int, tag: str) -> Path:
    rows = [{"instruction": f"{tag} question {i}", "output": f"{tag} answer {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(model_dir: Path, **data: Any) -> PreparedData:
    cfg = DataConfig(**{"cutoff_len": 128, "shuffle": False, **data})
    load = functools.partial(training_tokenizer, str(model_dir), cfg.template)
    return build_datasets(cfg, load, seed=0, concurrency=1)


def answers(ds: Any, tokenizer: Any) -> list[str]:
    texts = []
    for row in ds.take_all():
        learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
        texts.append(tokenizer.decode(learned, skip_special_tokens=True).strip())
    return sorted(texts)


def test_a_malformed_line_names_file_and_row_and_skip_leaves_it_out(
    local_ray: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = write_rows(tmp_path / "d.jsonl", 4, "a")
    lines = data.read_text().splitlines()
    lines[2] = '{"instruction": "broken", "output": '
    data.write_text("\n".join(lines) + "\n")
    # Raised inside a Ray Data actor: Ray wraps it, the message (shown by the CLI) names file and row.
    with pytest.raises(Exception, match=re.escape(f"{data}: row 3: not valid JSON (Expecting value at column 37)")):
        prepare(tiny_model_dir, dataset=[str(data)]).train.take_all()
    rows = prepare(tiny_model_dir, dataset=[str(data)], on_bad_rows="skip").train.take_all()
    assert len(rows) == 3


def test_validation_split_holds_out_rows_seen_nowhere_else(
    local_ray: None, tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    data = write_rows(tmp_path / "d.jsonl", 60, "a")
    prepared = prepare(tiny_model_dir, dataset=[str(data)], val_size=0.25)
    train, held_out = answers(prepared.train, tokenizer), answers(prepared.eval, tokenizer)
    assert set(train).isdisjoint(held_out) and len(train) + len(held_out) == 60
    # Each row is held out by a seeded hash of its file path and number, so the count varies with the
    # (temporary) path: binomial(60, 0.25) and binomial(60, 1/6). The bounds fail about once in 30,000 runs.
    assert 3 <= len(held_out) <= 31
    by_count = prepare(tiny_model_dir, dataset=[str(data)], val_size=10)
    assert 1 <= by_count.eval.count() <= 25 and by_count.eval.count() + by_count.train.count() == 60


def test_interleave_follows_probabilities_and_globs_pick_files(
    local_ray: None, tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    big, small = write_rows(tmp_path / "big.jsonl", 100, "big"), write_rows(tmp_path / "small.jsonl", 20, "small")
    over = prepare(tiny_model_dir, dataset=[str(big), str(small)], mix_strategy="interleave_over",
                   interleave_probs=[0.5, 0.5])  # fmt: skip
    texts = answers(over.train, tokenizer)
    assert sum(t.startswith("big") for t in texts) == 100 and sum(t.startswith("small") for t in texts) == 100
    under = prepare(tiny_model_dir, dataset=[str(big), str(small)], mix_strategy="interleave_under",
                    interleave_probs=[0.5, 0.5])  # fmt: skip
    texts = answers(under.train, tokenizer)
    assert sum(t.startswith("small") for t in texts) == 20 and 8 <= sum(t.startswith("big") for t in texts) <= 32
    globbed = prepare(tiny_model_dir, dataset=[str(tmp_path / "*.jsonl")])
    assert globbed.train.count() == 120


def test_packing_keeps_every_learned_token(local_ray: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_rows(tmp_path / "d.jsonl", 40, "a")
    plain = prepare(tiny_model_dir, dataset=[str(data)]).train.take_all()
    packed = prepare(tiny_model_dir, dataset=[str(data)], packing=True).train.take_all()
    assert len(packed) <= len(plain) / 2, "about three 35-token samples fit each 128-token row"
    assert all(len(r["input_ids"]) <= 128 and r["position_ids"][0] == 0 for r in packed)

    def learned(rows: list[dict[str, np.ndarray]]) -> int:
        return sum(int((r["labels"] != IGNORE_INDEX).sum()) for r in rows)

    assert learned(packed) == learned(plain)


def test_tokenized_path_is_written_once_reused_and_never_overwritten(
    local_ray: None, tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    data = write_rows(tmp_path / "d.jsonl", 30, "a")
    cfg = DataConfig(dataset=[str(data)], cutoff_len=128, val_size=0.2)
    cache = str(tmp_path / "tokenized")
    load = functools.partial(training_tokenizer, str(tiny_model_dir), None)
    fingerprint = data_fingerprint(cfg, tokenizer, str(tiny_model_dir), seed=0)
    built: list[int] = []

    def build() -> PreparedData:
        built.append(1)
        return build_datasets(cfg, load, seed=0, concurrency=1)

    first, reused = load_or_write(cache, fingerprint, build, shuffle_seed=0)
    assert not reused and first.eval is not None
    again, reused = load_or_write(cache, fingerprint, build, shuffle_seed=0)
    assert reused and built == [1], "the second run must not tokenize again"
    assert again.train.count() + again.eval.count() == 30
    assert answers(again.eval, tokenizer) == answers(first.eval, tokenizer)

    other = data_fingerprint(cfg.model_copy(update={"cutoff_len": 64}), tokenizer, str(tiny_model_dir), seed=0)
    with pytest.raises(DataError, match=r"written with other settings \(data.cutoff_len differ"):
        load_or_write(cache, other, build, shuffle_seed=0)
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match=r"holds no raytune_ft_tokenized\.json"):
        load_or_write(str(tmp_path / "half"), fingerprint, build, shuffle_seed=0)
