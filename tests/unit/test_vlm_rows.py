"""Rows with images for a vision-language model: each ``<image>`` becomes the model's tokens for that image, which
are never learned, the image arrays travel with the row, and a training step reads them (the loss depends on
the image); a text-only model and a cutoff that would cut through an image refuse the row by name."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raytune_ft.config import ModelConfig
from raytune_ft.data import IGNORE_INDEX, DataError
from raytune_ft.data.pipeline import EncodeOptions, TokenizeRows
from raytune_ft.data.sources import resolve_datasets
from raytune_ft.models import load_row_tokenizer
from raytune_ft.models.vision import load_image_encoder
from raytune_ft.train import build_training
from raytune_ft.train.loop import collator
from tests.tiny_vlms import save_tiny_vlm
from tests.unit.test_media_rows import chat, demo_registry, png
from tests.unit.test_step import job


@pytest.fixture(scope="module", params=["gemma3", "llava", "qwen2_vl"])
def vlm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, builtin_dir: Path) -> Any:
    return request.param, save_tiny_vlm(tmp_path_factory.mktemp(request.param), request.param, builtin_dir)


def rows_folder(tmp_path: Path) -> Path:
    png(tmp_path / "data" / "red.png", (220, 20, 20))
    png(tmp_path / "data" / "blue.png", (20, 20, 220))
    both = chat("<image> and <image>: same colour?", "No.")
    rows = [{"messages": chat("<image>What colour is it?", "Red."), "images": ["red.png"]},
            {"messages": chat("Say hi.", "Hi.")}, {"messages": both, "images": ["red.png", "blue.png"]}]  # fmt: skip
    return demo_registry(tmp_path / "data", rows)


def tokenized(folder: Path, model: Path, cutoff: int = 256, skip: bool = False, stage: str = "sft") -> dict[str, Any]:
    [source] = resolve_datasets(["mm"], str(folder))
    records = json.loads((folder / "mm.json").read_text())
    batch = {"path": np.asarray([str(folder / "mm.json")] * len(records)), "row": np.arange(1, len(records) + 1),
             "record": np.asarray([json.dumps(r) for r in records])}  # fmt: skip
    options = EncodeOptions(cutoff_len=cutoff, skip_bad_rows=skip, stage=stage)
    encoder = load_image_encoder(ModelConfig(source=str(model)), 768 * 768, 32 * 32)
    return TokenizeRows(lambda: load_row_tokenizer(str(model)), options, [source], lambda: encoder)(batch)


def test_image_rows_carry_their_tokens_masked_and_their_arrays(vlm: Any, tmp_path: Path) -> None:
    _, model = vlm
    columns = tokenized(rows_folder(tmp_path), model.folder)
    counts = [int((ids == model.image_token_id).sum()) for ids in columns["input_ids"]]
    assert counts[0] > 0 and counts[1:] == [0, 2 * counts[0]], counts  # the two images have one size
    for ids, labels in zip(columns["input_ids"], columns["labels"], strict=True):
        assert (labels[ids == model.image_token_id] == IGNORE_INDEX).all()
        assert (labels != IGNORE_INDEX).any()  # the answer is still learned
    media = [pickle.loads(blob) if blob else {} for blob in columns["media"]]
    assert (
        media[1] == {} and "pixel_values" in media[0] and len(media[2]["pixel_values"]) > len(media[0]["pixel_values"])
    )


def test_a_training_step_reads_the_image(vlm: Any, tmp_path: Path) -> None:
    _, model = vlm
    columns = tokenized(rows_folder(tmp_path), model.folder)
    cfg = job(model.folder, "adapter.type=full", "train.learning_rate=1e-3")
    core, tokenizer = build_training(cfg, 10, torch.device("cpu"))
    rows = {name: np.asarray(column, dtype=object) for name, column in columns.items()}
    batch = collator(cfg, core.strategy.unwrap(core.model), tokenizer.pad_token_id)(rows)  # as training collates
    assert {"pixel_values", "attention_mask"} <= set(batch) and "position_ids" not in batch
    losses = [core.evaluate([batch])[0]]
    flipped = dict(batch, pixel_values=torch.flip(batch["pixel_values"], dims=[0]))  # each row sees other pixels
    assert core.evaluate([flipped])[0] != pytest.approx(losses[0], rel=1e-6), "the loss ignores the images"
    tower = {n: p.detach().clone() for n, p in core.model.named_parameters() if "vision" in n or "visual" in n}
    for _ in range(5):
        core.step([batch])
    assert core.evaluate([batch])[0] < losses[0]
    assert all(torch.equal(p, dict(core.model.named_parameters())[n]) for n, p in tower.items()), "the tower is frozen"


def test_a_text_model_and_a_cutoff_inside_an_image_refuse_the_row(
    vlm: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    _, model = vlm
    with pytest.raises(DataError, match=r"mm.json: row 1: images: the model is text-only"):
        tokenized(rows_folder(tmp_path), tiny_model_dir)
    png(tmp_path / "late" / "red.png")
    turns = [*chat("Hi.", "Hello."), *chat("<image>What colour?", "Red.")]
    folder = demo_registry(tmp_path / "late", [{"messages": turns, "images": ["red.png"]}])
    [ids] = tokenized(folder, model.folder)["input_ids"]
    cutoff = int(np.flatnonzero(ids == model.image_token_id)[0]) + 1  # the first answer fits, the image does not
    with pytest.raises(DataError, match=rf"mm.json: row 1: its image tokens do not fit in data.cutoff_len {cutoff}"):
        tokenized(folder, model.folder, cutoff=cutoff)


def test_pretraining_text_on_a_vlm_is_split_and_pretraining_images_are_refused(vlm: Any, tmp_path: Path) -> None:
    _, model = vlm
    folder = tmp_path / "pt"
    png(folder / "red.png")
    text = " ".join(f"word{i}" for i in range(80))
    (folder / "mm.json").write_text(json.dumps([{"text": text}]))
    entry = {"file_name": "mm.json", "columns": {"prompt": "text"}}
    (folder / "dataset_info.json").write_text(json.dumps({"mm": entry}))
    pieces = tokenized(folder, model.folder, cutoff=32, stage="pt")["input_ids"]
    assert len(pieces) > 2 and all(len(ids) <= 32 for ids in pieces)  # split, not cut to its start
    (folder / "mm.json").write_text(json.dumps([{"text": "<image>A red square.", "images": ["red.png"]}]))
    entry["columns"]["images"] = "images"
    (folder / "dataset_info.json").write_text(json.dumps({"mm": entry}))
    with pytest.raises(DataError, match=r"mm.json: row 1: images: rows with images train with method.stage sft"):
        tokenized(folder, model.folder, stage="pt")
