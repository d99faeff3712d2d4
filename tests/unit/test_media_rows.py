"""Multimodal rows in LLaMA-Factory's format (an ``images`` column, ``<image>`` placeholders): paths resolved
against the dataset folder, placeholders counted against the images, images decoded or refused by row; images for
a text-only model, and videos, are refused by row."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

from raytune_ft.data import DataError
from raytune_ft.data.formats import normalize_example
from raytune_ft.data.media import load_image
from raytune_ft.data.pipeline import EncodeOptions, encode_rows
from raytune_ft.data.sources import resolve_datasets


def png(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)
    return path


def demo_registry(folder: Path, rows: list[dict[str, Any]]) -> Path:
    """A dataset folder as LLaMA-Factory's mllm_demo lays it out: rows in openai-style sharegpt with an images
    column whose paths start at the dataset folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mm.json").write_text(json.dumps(rows))
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    columns = {"messages": "messages", "images": "images"}
    entry = {"file_name": "mm.json", "formatting": "sharegpt", "columns": columns, "tags": tags}
    (folder / "dataset_info.json").write_text(json.dumps({"mm": entry}))
    return folder


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_images_resolve_against_the_dataset_folder_in_placeholder_order(tmp_path: Path) -> None:
    png(tmp_path / "data" / "pics" / "1.png")
    png(tmp_path / "data" / "pics" / "2.png")
    row = {"messages": chat("<image><image>Which is red?", "The first."), "images": ["pics/1.png", "pics/2.png"]}
    folder = demo_registry(tmp_path / "data", [row])
    [source] = resolve_datasets(["mm"], str(folder))
    example = normalize_example(row, "sft", {}, "mm.json: row 1", source)
    assert example["images"] == [str(folder / "pics" / "1.png"), str(folder / "pics" / "2.png")]
    assert example["messages"][0]["content"] == "<image><image>Which is red?"


@pytest.mark.parametrize(
    ("images", "says"),
    [
        (["pics/1.png", "pics/1.png"], "hold 1 <image> placeholder(s) but column 'images' lists 2 images"),
        ([], "hold 1 <image> placeholder(s) but column 'images' lists 0 images"),
        (["pics/missing.png"], "'pics/missing.png' does not exist"),
        (42, "column 'images' must list paths or URIs, got int"),
    ],
)
def test_a_row_whose_images_do_not_fit_is_an_error_naming_it(tmp_path: Path, images: Any, says: str) -> None:
    png(tmp_path / "data" / "pics" / "1.png")
    row = {"messages": chat("<image>What colour?", "Red."), "images": images}
    [source] = resolve_datasets(["mm"], str(demo_registry(tmp_path / "data", [row])))
    with pytest.raises(DataError, match=r"^mm.json: row 3: .*" + _re(says)):
        normalize_example(row, "sft", {}, "mm.json: row 3", source)


def test_text_rows_may_say_image_without_images(tmp_path: Path) -> None:
    example = normalize_example({"messages": chat("What does <image> mean in HTML?", "Nothing.")}, "sft", {}, "r", None)
    assert "images" not in example


def test_plain_rows_resolve_images_against_their_own_folder(tmp_path: Path) -> None:
    from raytune_ft.data.sources import DatasetSource

    png(tmp_path / "rows" / "cat.png")
    source = DatasetSource("rows", tmp_path / "rows" / "chat.jsonl")
    row = {"messages": chat("<image>Who?", "A cat."), "images": "cat.png"}
    assert normalize_example(row, "sft", {}, "r", source)["images"] == [str(tmp_path / "rows" / "cat.png")]


def test_images_decode_from_paths_uris_and_bytes(tmp_path: Path) -> None:
    path = png(tmp_path / "a.png", (10, 200, 10))
    data = path.read_bytes()
    for item in (str(path), path.as_uri(), {"bytes": data, "path": "a.png"},
                 "data:image/png;base64," + base64.b64encode(data).decode()):  # fmt: skip
        image = load_image(item, "r")
        assert image.mode == "RGB" and image.size == (8, 6) and image.getpixel((0, 0)) == (10, 200, 10), item


def test_an_image_that_does_not_decode_names_its_row(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"^mm.json: row 9: images\[0\]: the image '.*broken.png' cannot be read"):
        load_image(str(broken), "mm.json: row 9: images[0]")
    with pytest.raises(DataError, match="cannot be read"):
        load_image({"bytes": io.BytesIO(b"xx").getvalue()}, "r")


def test_images_for_a_text_model_and_videos_are_refused_by_row(tmp_path: Path, tokenizer: Any) -> None:
    image = str(png(tmp_path / "data" / "1.png"))
    video = tmp_path / "data" / "clip.mp4"
    video.write_bytes(b"not decoded")
    rows = [{"messages": chat("<image>What colour?", "Red."), "images": [image]},
            {"messages": chat("<video>What happens?", "Nothing."), "videos": [str(video)]}]  # fmt: skip
    plain = str(tmp_path / "data" / "plain.jsonl")
    results = encode_rows(tokenizer, EncodeOptions(cutoff_len=64), [], [(plain, i + 1, json.dumps(r)) for i, r in
                                                                        enumerate(rows)])  # fmt: skip
    assert results[0].problem.startswith(f"{plain}: row 1: images: the model is text-only; train a vision-language")
    assert results[1].problem.startswith(f"{plain}: row 2: videos: training on videos is not supported")


def _re(text: str) -> str:
    import re

    return re.escape(text)
