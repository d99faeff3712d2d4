"""Registry datasets through the Ray Data pipeline on a local Ray: a hub dataset's subset and split read
from an offline cache with a ``num_samples`` draw, .txt pre-training rows, and data that leaves nothing
to train on failing in ``data preview`` and before training starts."""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from raytune_ft.config import DataConfig, JobConfig
from raytune_ft.data import IGNORE_INDEX, DataError, PreparedData, build_datasets
from raytune_ft.train import job_tokenizer, prepare_job_data, training_tokenizer
from tests.hub_cache import dataset_cache

pytestmark = pytest.mark.integration

CARD = """---
configs:
- config_name: en
  data_files: en/*.jsonl
- config_name: fr
  data_files:
  - split: train
    path: fr/train.jsonl
  - split: validation
    path: fr/valid.jsonl
---
"""

QA = ("question", "answer")
COLUMNS = {"prompt": "question", "response": "answer"}  # the rows are read as their entry says (Ray names the files)


def rows(tag: str, n: int, prompt: str = "instruction", answer: str = "output") -> str:
    return "".join(json.dumps({prompt: f"{tag} q{i}", answer: f"{tag} a{i}"}) + "\n" for i in range(n))


def prepare(model_dir: Path, stage: str = "sft", **data: Any) -> PreparedData:
    cfg = DataConfig(**{"cutoff_len": 128, "shuffle": False, **data})
    load = functools.partial(training_tokenizer, str(model_dir), cfg.template)
    return build_datasets(cfg, load, seed=0, concurrency=1, stage=stage)


def learned_texts(ds: Any, tokenizer: Any) -> list[str]:
    texts = []
    for row in ds.take_all():
        learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
        texts.append(tokenizer.decode(learned, skip_special_tokens=True).strip())
    return sorted(texts)


@pytest.fixture
def hub_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dataset_info.json naming subsets and splits of a dataset held in an offline Hugging Face cache."""
    repo = tmp_path / "repo"
    for name, content in {"README.md": CARD, "en/all.jsonl": rows("en", 4), "fr/train.jsonl": rows("fr", 5, *QA),
                          "fr/valid.jsonl": rows("fr-valid", 2, *QA)}.items():  # fmt: skip
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(content)
    cache = tmp_path / "hf-cache"
    dataset_cache(cache, "org/multi", repo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({
        "fr_valid": {"hf_hub_url": "org/multi", "subset": "fr", "split": "validation", "columns": COLUMNS},
        "fr_drawn": {"hf_hub_url": "org/multi", "subset": "fr", "num_samples": 12, "columns": COLUMNS},
    }))  # fmt: skip
    return folder


def test_hub_subset_split_and_num_samples_stream_through_the_pipeline(
    local_ray: None, tiny_model_dir: Path, tokenizer: Any, hub_registry: Path
) -> None:
    valid = prepare(tiny_model_dir, dataset=["fr_valid"], dataset_dir=str(hub_registry))
    assert learned_texts(valid.train, tokenizer) == ["fr-valid a0", "fr-valid a1"]
    drawn = Counter(learned_texts(prepare(tiny_model_dir, dataset=["fr_drawn"], dataset_dir=str(hub_registry)).train,
                                  tokenizer))  # fmt: skip
    assert sum(drawn.values()) == 12 and set(drawn) == {f"fr a{i}" for i in range(5)}
    assert sorted(drawn.values()) == [2, 2, 2, 3, 3]  # every row twice, two rows a third time
    # max_samples cuts the drawn rows, as LLaMA-Factory's does: 3 distinct rows of the 5.
    capped = learned_texts(prepare(tiny_model_dir, dataset=["fr_drawn"], dataset_dir=str(hub_registry),
                                   max_samples=3).train, tokenizer)  # fmt: skip
    assert len(capped) == len(set(capped)) == 3


def test_preview_reads_the_sources_it_is_given_as_training_does(
    local_ray: None, tiny_model_dir: Path, hub_registry: Path
) -> None:
    from raytune_ft.data.pipeline import checked_sources
    from raytune_ft.data.preview import build_preview
    from raytune_ft.models import load_row_tokenizer

    cfg = DataConfig(dataset=["fr_drawn"], dataset_dir=str(hub_registry), cutoff_len=128)
    sources = checked_sources(cfg.dataset, cfg.dataset_dir, "sft")  # as the CLI does before Ray starts
    # Given the checked sources, the preview looks nothing up again: a registry broken since is not read.
    (hub_registry / "dataset_info.json").write_text("{not json")
    load = functools.partial(load_row_tokenizer, str(tiny_model_dir))
    report = build_preview(cfg, load, concurrency=1, sources=sources)
    assert (report.rows, report.bad, len(report.lengths)) == (12, 0, 12)  # the num_samples draw, as training reads it
    with pytest.raises(DataError, match=r"dataset_info\.json: not valid JSON"):
        build_preview(cfg, load, concurrency=1)


def test_txt_file_trains_pt_rows_one_per_line(
    local_ray: None, tiny_model_dir: Path, tokenizer: Any, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"Document number {i} is plain text.\n" for i in range(6)) + "\n")
    out = prepare(tiny_model_dir, stage="pt", dataset=[str(corpus)]).train.take_all()
    texts = sorted(tokenizer.decode(row["input_ids"]) for row in out)
    assert texts == sorted(f"Document number {i} is plain text.{tokenizer.eos_token}" for i in range(6))
    assert all((row["labels"] != IGNORE_INDEX).all() for row in out)


def test_no_trainable_row_fails_preview_and_training_with_the_reason(
    local_ray: None, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raytune_ft.cli import main
    from raytune_ft.data.preview import build_preview
    from raytune_ft.models import load_row_tokenizer

    data = tmp_path / "long.jsonl"
    data.write_text(rows("a", 3))
    # Every answer lies beyond 8 tokens (the chat template's system prompt alone is longer).
    job = JobConfig.model_validate({"model": {"source": str(tiny_model_dir)},
                                    "data": {"dataset": [str(data)], "cutoff_len": 8}})  # fmt: skip
    load = functools.partial(load_row_tokenizer, job.model.source)
    with pytest.raises(DataError, match=r"no trainable row .*Of 3 rows read, 0 are bad and 3 have no answer token"):
        build_preview(job.data, load, concurrency=1)
    with pytest.raises(DataError, match=r"no trainable row in data.dataset .*long.jsonl.*data preview CONFIG"):
        prepare_job_data(job, job_tokenizer(job), training_cpus=0.5, share=False)
    # The CLI prints the error and exits non-zero, for an empty file too (it did report "rows read: 0").
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"model": {"source": str(tiny_model_dir)}, "data": {"dataset": [str(empty)]},
                                      "train": {"storage_path": str(tmp_path / "runs")}}))  # fmt: skip
    for verb in (["data", "preview"], ["train"]):
        assert main([*verb, str(config)]) == 2
        assert f"dataset '{empty}' is empty: {empty} hold(s) no row" in capsys.readouterr().err
