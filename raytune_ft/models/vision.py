"""Vision-language models (what transformers loads as image-text-to-text: Qwen2/2.5/3-VL, LLaVA, LLaVA-NeXT,
Gemma 3): which of their parts train.

Such a model is three parts, found by the module names transformers gives them in every supported family: the
vision tower (``visual``, ``vision_tower``), the projector that maps its features into the language model's
embeddings (``multi_modal_projector``, or Qwen's ``visual.merger`` and ``visual.deepstack_merger_list``), and
the language model (``language_model`` and ``lm_head``). As in LLaMA-Factory, the tower and the projector are
frozen by default (``adapter.freeze_vision_tower``, ``freeze_multi_modal_projector``) and the language model
trains (``freeze_language_model``); LoRA's ``target: all`` takes the linear layers of the parts that train.

``ImageEncoder`` is the data side: inside the Ray Data tasks it runs the model's own processor on each image of
a row, which gives the text that stands for the image (its placeholder expanded into as many image tokens as
the image has features) and the arrays the model reads (``pixel_values``, Qwen's ``image_grid_thw``, ...).
Qwen-VL processors are built without their video half, which needs torchvision.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_ft.config import AdapterConfig, ConfigError, JobConfig, ModelConfig

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

__all__ = [
    "IMAGE_PROMPTS", "ImageEncoder", "frozen_parts", "image_encoder_loader", "image_only", "is_vision_language",
    "is_vision_language_model", "load_image_encoder", "lora_targets", "part_of", "train_parts", "with_image_arrays",
]  # fmt: skip

_PROJECTOR = ("multi_modal_projector", "visual.merger", "visual.deepstack_merger_list")
_TOWER = ("visual", "vision_tower")
_LANGUAGE = ("language_model", "lm_head")


def _vision_config(folder: Path) -> dict[str, Any] | None:
    """The model's config.json in ``folder`` when it is a vision-language model's (it has a vision part)."""
    path = folder / "config.json"
    config: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    return config if "vision_config" in config else None


def is_vision_language(folder: Path) -> bool:
    """Whether the model in ``folder`` is a vision-language model."""
    return _vision_config(folder) is not None


def part_of(name: str) -> str | None:
    """``projector``, ``vision_tower`` or ``language_model`` for a module or parameter name of a vision-language
    model (the projector first: Qwen's sits inside the tower), None for anything else."""
    parts = name.removeprefix("model.").split(".")
    for part, prefixes in (("projector", _PROJECTOR), ("vision_tower", _TOWER), ("language_model", _LANGUAGE)):
        if any(parts[: len(p.split("."))] == p.split(".") for p in prefixes):
            return part
    return None


def frozen_parts(cfg: AdapterConfig) -> set[str]:
    """The parts ``cfg`` freezes."""
    flags = {"vision_tower": cfg.freeze_vision_tower, "projector": cfg.freeze_multi_modal_projector,
             "language_model": cfg.freeze_language_model}  # fmt: skip
    return {part for part, frozen in flags.items() if frozen}


def train_parts(model: torch.nn.Module, cfg: AdapterConfig) -> None:
    """Freeze the parts ``cfg`` freezes (the rest keeps its ``requires_grad``); refuse a model left with nothing
    to train."""
    frozen = frozen_parts(cfg)
    for name, parameter in model.named_parameters():
        if part_of(name) in frozen:
            parameter.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            "adapter: freeze_vision_tower, freeze_multi_modal_projector and freeze_language_model leave nothing of "
            "the model to train; unfreeze one"
        )


def lora_targets(model: torch.nn.Module, cfg: AdapterConfig) -> list[str]:
    """``adapter.target`` in a vision-language model, as full module names inside the parts that train: ``all``
    takes every linear layer there (never the LM head); named modules (``q_proj``) are taken there only, so
    that the frozen tower's own ``q_proj`` stays as it is (as LLaMA-Factory excludes it)."""
    import torch

    frozen = frozen_parts(cfg)
    wanted = tuple(cfg.target)
    names = [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and part_of(name) not in (None, *frozen) and "lm_head" not in name
        and (wanted == ("all",) or name.rsplit(".", 1)[-1] in wanted)
    ]  # fmt: skip
    if not names:
        raise ConfigError(
            f"adapter.target {cfg.target}: no such linear layer in the parts of the model that train (the frozen "
            "vision tower and projector are left out); name modules of the language model or unfreeze a part"
        )
    return names


IMAGE_PROMPTS = {
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava": "<image>",
    "llava_next": "<image>",
    "gemma3": "<start_of_image>",
}
"""``model_type`` -> the text its processor expands into one image's tokens (LLaMA-Factory's ``<image>``
placeholder becomes it)."""

_QWEN_PROCESSORS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}
_TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
"""Processor outputs that are not the image's own arrays (the row's tokens are encoded with the text)."""


def image_only(processor_class: type) -> type:
    """``processor_class`` (a Qwen-VL processor) without its video half, so that it builds without torchvision."""

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                 **kwargs: Any) -> None:  # fmt: skip
        processor_class.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)  # type: ignore[misc]

    name = processor_class.__name__.replace("Processor", "ImageOnlyProcessor")
    return type(name, (processor_class,), {"__init__": __init__, "__module__": __name__})


def _processor(folder: Path, model_type: str, trust_remote_code: bool) -> Any:
    import transformers

    if model_type in _QWEN_PROCESSORS:
        processor: Any = image_only(getattr(transformers, _QWEN_PROCESSORS[model_type]))
        return processor.from_pretrained(folder)
    return transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)


class ImageEncoder:
    """A vision-language model's processor, applied one image at a time: each image is scaled into
    [``min_pixels``, ``max_pixels``] (LLaMA-Factory's ``image_min_pixels`` / ``image_max_pixels``), then the
    processor expands the model's image prompt for it."""

    def __init__(
        self, folder: Path, config: dict[str, Any], max_pixels: int, min_pixels: int, trust_remote_code: bool = False
    ) -> None:
        self.folder, self.trust_remote_code = folder, trust_remote_code
        self.model_type = str(config.get("model_type"))
        self.max_pixels, self.min_pixels = max_pixels, min_pixels
        self.image_token_id = int(config.get("image_token_id", config.get("image_token_index", -1)))
        """The token each image feature takes in a row, where the model puts the features (its config's)."""
        self._processor: Any = None  # loaded with the first image: text rows never need it

    def encode(self, images: list[Image.Image]) -> tuple[list[str], dict[str, np.ndarray]]:
        """The text standing for each image, and the row's image arrays (each image's, concatenated)."""
        import numpy as np

        if self.model_type not in IMAGE_PROMPTS:
            raise ConfigError(
                f"{self.folder}: images are not supported for model type {self.model_type!r} yet; supported: "
                f"{', '.join(sorted(IMAGE_PROMPTS))}"
            )
        if self._processor is None:
            self._processor = _processor(self.folder, self.model_type, self.trust_remote_code)
        prompt = IMAGE_PROMPTS[self.model_type]
        texts: list[str] = []
        arrays: dict[str, list[np.ndarray]] = {}
        for image in images:
            out = self._processor(text=[prompt], images=[self._scaled(image)], return_tensors="np",
                                  add_special_tokens=False)  # fmt: skip
            texts.append(self._processor.tokenizer.decode(out["input_ids"][0].tolist()))
            for key, value in out.items():
                if key not in _TEXT_KEYS:
                    arrays.setdefault(key, []).append(np.asarray(value))
        return texts, {key: _concatenated(parts) for key, parts in arrays.items()}

    def _scaled(self, image: Image.Image) -> Image.Image:
        """``image`` scaled, keeping its aspect, into the pixel bounds (as LLaMA-Factory does before the
        processor, whose own resizing still applies)."""
        pixels = image.width * image.height
        if self.min_pixels <= pixels <= self.max_pixels:
            return image
        factor = math.sqrt((self.max_pixels if pixels > self.max_pixels else self.min_pixels) / pixels)
        return image.resize((max(1, int(image.width * factor)), max(1, int(image.height * factor))))


def load_image_encoder(model: ModelConfig, max_pixels: int, min_pixels: int) -> ImageEncoder | None:
    """The model's ``ImageEncoder``, resolved on the node this runs on; None for a text-only model."""
    from .source import resolve_model

    folder = resolve_model(model)
    config = _vision_config(folder)
    return ImageEncoder(folder, config, max_pixels, min_pixels, model.trust_remote_code) if config else None


def image_encoder_loader(cfg: JobConfig) -> Callable[[], ImageEncoder | None]:
    """``load_image_encoder`` for ``cfg``'s model and pixel bounds, to run in the data tasks (picklable)."""
    import functools

    return functools.partial(load_image_encoder, cfg.model, cfg.data.image_max_pixels, cfg.data.image_min_pixels)


def is_vision_language_model(model: Any) -> bool:
    """Whether ``model`` (possibly wrapped by peft, DDP or DeepSpeed) is a vision-language model."""
    inner = getattr(model, "module", model)
    return getattr(getattr(inner, "config", None), "vision_config", None) is not None


def with_image_arrays(model: Any, batch: dict[str, torch.Tensor], media: Any) -> dict[str, torch.Tensor]:
    """A padded batch with its rows' image arrays (``media``: each row's pickled arrays, empty without images)
    concatenated in row order, and the token type ids the model reads."""
    import pickle

    import torch

    arrays: dict[str, list[np.ndarray]] = {}
    for blob in media if media is not None else ():
        for key, value in (pickle.loads(blob) if blob else {}).items():
            arrays.setdefault(key, []).append(value)
    out = dict(batch)
    out.update({key: torch.from_numpy(_concatenated(parts)) for key, parts in arrays.items()})
    out.update(_type_ids(getattr(model, "module", model), batch["input_ids"]))
    return out


def _concatenated(parts: list[np.ndarray]) -> np.ndarray:
    """``parts`` joined along the first axis, their other axes zero-padded to the largest (LLaVA-NeXT's crops)."""
    import numpy as np

    widest = tuple(max(dims) for dims in zip(*(part.shape[1:] for part in parts), strict=True))
    padded = [
        np.pad(part, [(0, 0), *((0, w - d) for w, d in zip(widest, part.shape[1:], strict=True))]) for part in parts
    ]
    return np.concatenate(padded)


def _type_ids(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward inputs some vision-language models need beside the image arrays, from the tokens: Qwen-VL's
    ``mm_token_type_ids`` (1 image, 2 video) and Gemma 3's ``token_type_ids`` (1 on image tokens)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in _QWEN_PROCESSORS:
        image, video = config.image_token_id, config.video_token_id  # type: ignore[union-attr]
        return {"mm_token_type_ids": (input_ids == image).long() + 2 * (input_ids == video).long()}
    if model_type == "gemma3":
        return {"token_type_ids": (input_ids == config.image_token_index).long()}  # type: ignore[union-attr]
    return {}
