"""Images and videos of multimodal rows, in LLaMA-Factory's format: an ``images`` (``videos``) column listing
one item per ``<image>`` (``<video>``) placeholder in the row's messages, in the order they appear.

An item is a path (relative to the dataset's media folder: the registry's ``dataset_dir``, or the folder of a
data file given by path), a URI (``s3://``, ``https://``, ``file://``), or a ``{"bytes", "path"}`` dict as
Hugging Face's Image feature stores it in parquet; a video is a file or a list of frame images. Rows are
checked as they are normalised (counts, local files present); images are decoded where the model's processor
runs, inside the Ray Data tasks, and an image that cannot be decoded is an error naming its row.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .sources import DataError, DatasetSource

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["MEDIA_COLUMNS", "MediaEncoder", "load_image", "row_media", "with_images"]

MEDIA_COLUMNS = {"images": "<image>", "videos": "<video>"}
"""Media column -> the placeholder that marks each of its items in the messages."""


def row_media(
    row: Mapping[str, Any], texts: Iterable[str], where: str, source: DatasetSource | None
) -> dict[str, list[Any]]:
    """The row's images and videos (only the kinds it has), local paths made absolute, each list as long as
    its placeholders in ``texts`` (the row's message contents and answers). Rows of a dataset that maps no
    media column and holds none are text: an ``<image>`` in them is only text."""
    texts = list(texts)
    found: dict[str, list[Any]] = {}
    for kind, placeholder in MEDIA_COLUMNS.items():
        column = source.columns.get(kind, kind) if source is not None else kind
        if column not in row and (source is None or kind not in source.columns):
            continue
        items = _items(row.get(column), column, where)
        marked = sum(text.count(placeholder) for text in texts)
        if marked != len(items):
            raise DataError(
                f"{where}: the messages hold {marked} {placeholder} placeholder(s) but column {column!r} lists "
                f"{len(items)} {kind}; put one {placeholder} in the text where each of them belongs"
            )
        if items:
            folder = _media_folder(source)
            found[kind] = [_resolved(item, folder, f"{where}: {kind}[{i}]") for i, item in enumerate(items)]
    return found


class MediaEncoder(Protocol):
    """A vision-language model's processor as the data tasks use it (``raytune_ft.models.ImageEncoder``)."""

    image_token_id: int

    def encode(self, images: list[Image.Image]) -> tuple[list[str], dict[str, np.ndarray]]:
        """The text standing for each image (its tokens) and the row's image arrays."""
        ...


def with_images(example: dict[str, Any], encoder: MediaEncoder | None, stage: str, where: str) -> dict[str, Any]:
    """``example`` with each ``<image>`` of its messages replaced by the model's text for that image, and the
    row's image arrays under ``media``; examples without images as they are."""
    if "videos" in example:
        raise DataError(f"{where}: videos: training on videos is not supported; leave the column out")
    if "images" not in example:
        return example
    if encoder is None:
        raise DataError(
            f"{where}: images: the model is text-only; train a vision-language model (Qwen2-VL, Qwen2.5-VL, "
            "Qwen3-VL, LLaVA, LLaVA-NeXT, Gemma 3) on them, or leave the column out to train on the text alone"
        )
    if stage != "sft":
        raise DataError(f"{where}: images: rows with images train with method.stage sft; this stage reads text only")
    items = example["images"]
    texts, arrays = encoder.encode([load_image(item, f"{where}: images[{i}]") for i, item in enumerate(items)])
    expanded = iter(texts)
    placeholder = re.escape(MEDIA_COLUMNS["images"])
    messages = [
        {**m, "content": re.sub(placeholder, lambda _: next(expanded), m["content"])} for m in example["messages"]
    ]
    rest = {key: value for key, value in example.items() if key not in ("images", "messages")}
    return {**rest, "messages": messages, "media": arrays}


def _items(value: Any, column: str, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | dict):
        return [value]
    if not isinstance(value, list):
        raise DataError(f"{where}: column {column!r} must list paths or URIs, got {type(value).__name__}")
    return value


def _media_folder(source: DatasetSource | None) -> Path | None:
    if source is None:
        return None
    if source.media_dir is not None:
        return Path(source.media_dir)
    path = Path(str(source.path))
    return path.parent if path.suffix else path


def _resolved(item: Any, folder: Path | None, where: str) -> Any:
    """A local path made absolute (and checked to exist), a URI as it is, a frame list item by item, a
    ``{"bytes", "path"}`` dict with bytes as it is."""
    if isinstance(item, list):
        return [_resolved(frame, folder, f"{where}[{i}]") for i, frame in enumerate(item)]
    if isinstance(item, dict):
        if item.get("bytes"):
            return item
        item = item.get("path")
    if not isinstance(item, str) or not item:
        raise DataError(f"{where}: expected a path, a URI or a {{'bytes': ..., 'path': ...}} dict, got {item!r}")
    if "://" in item or item.startswith("data:"):
        return item
    path = Path(item).expanduser()
    if not path.is_absolute() and folder is not None:
        path = folder / path
    if not path.is_file():
        raise DataError(f"{where}: {item!r} does not exist (looked for {path}); paths are relative to {folder}")
    return str(path)


def load_image(item: Any, where: str) -> Image.Image:
    """An RGB image from a resolved item (``row_media``): a path, a ``file://``, ``http(s)://`` or fsspec URI,
    a ``data:`` URI, or a ``{"bytes"}`` dict. Anything that does not decode is an error naming ``where``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(_image_bytes(item))) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"{where}: the image {_named(item)} cannot be read: {err}") from None


def _image_bytes(item: Any) -> bytes:
    if isinstance(item, dict):
        return bytes(item["bytes"])
    if item.startswith("data:"):
        import base64

        return base64.b64decode(item.split(",", 1)[1])
    if item.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(item, timeout=30) as response:
            return bytes(response.read())
    if "://" in item:
        import fsspec

        with fsspec.open(item, "rb") as handle:
            return bytes(handle.read())
    return Path(item).read_bytes()


def _named(item: Any) -> str:
    return repr(item.get("path") or "<bytes>") if isinstance(item, dict) else repr(item)
