"""Tiny random vision-language models the tests train, one per supported family, built from configs with their
processors built locally around the builtin tokenizer (nothing is downloaded).

Each family's special tokens are added to the builtin tokenizer (ids from 49152 on) and its config names the same
ids, since the model finds image positions by ``input_ids == image token id``. Image processors are the PIL ones:
torchvision has no CPU build here, and transformers picks the PIL processors without it. Qwen's processors also
hold a video processor, which needs torchvision; ``image_only`` makes a processor class without it, registered
with ``AutoProcessor`` here for the tests that load one through it (without that, ``AutoProcessor`` returns the
bare tokenizer; the product loads them through the image-only class itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft.models.vision import image_only

__all__ = ["FAMILIES", "TinyVlm", "register_processors", "save_tiny_vlm"]

_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 2048}  # fmt: skip
_QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


@dataclass(frozen=True)
class TinyVlm:
    """A saved tiny VLM: its folder, the text that stands for one image in a prompt, and the token that the
    processor repeats for each of the image's features."""

    folder: Path
    image_text: str
    image_token_id: int


def _qwen_classes() -> dict[str, tuple[Any, type]]:
    import transformers as t

    return {
        "qwen2_vl": (t.Qwen2VLConfig, image_only(t.Qwen2VLProcessor)),
        "qwen2_5_vl": (t.Qwen2_5_VLConfig, image_only(t.Qwen2_5_VLProcessor)),
        "qwen3_vl": (t.Qwen3VLConfig, image_only(t.Qwen3VLProcessor)),
    }


_REGISTERED: dict[str, type] = {}


def register_processors() -> dict[str, type]:
    """The image-only Qwen processor classes, registered with ``AutoProcessor`` (once per process)."""
    from transformers import AutoProcessor

    if not _REGISTERED:
        for family, (config, processor) in _qwen_classes().items():
            AutoProcessor.register(config, processor, exist_ok=True)
            _REGISTERED[family] = processor
    return _REGISTERED


def _tokenizer(tokenizer_dir: Path, tokens: list[str] | None = None, **attributes: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, extra_special_tokens=attributes or None)
    if tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    return tokenizer


def _text_config(tokenizer: Any, **more: Any) -> dict[str, Any]:
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    return {"vocab_size": len(tokenizer), **_TEXT, **ids, **more}


def _qwen(family: str, tokenizer_dir: Path) -> tuple[Any, Any, str, int]:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _tokenizer(tokenizer_dir, _QWEN_TOKENS)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_TOKENS}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    text = _text_config(tokenizer, rope_parameters=rope)
    vision: dict[str, Any] = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
    }
    patch = 14
    if family == "qwen2_vl":
        vision = {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2}
    elif family == "qwen2_5_vl":
        vision |= {"window_size": 56, "fullatt_block_indexes": [1]}
    else:
        patch = 16
        text |= {"head_dim": 16, "rope_parameters": {**rope, "mrope_interleaved": True}}
        vision |= {"patch_size": 16, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    config_class = _qwen_classes()[family][0]
    register_processors()
    config = config_class(
        text_config=text, vision_config=vision, tie_word_embeddings=True, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    side = patch * 2  # one merged token covers side x side pixels: 4 to 16 tokens per image
    pixels = {"shortest_edge": side * side * 4, "longest_edge": side * side * 16}
    images = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2, size=pixels)
    processor = _REGISTERED[family](image_processor=images, tokenizer=tokenizer)
    return config, processor, "<|vision_start|><|image_pad|><|vision_end|>", ids["<|image_pad|>"]


def _llava(family: str, tokenizer_dir: Path) -> tuple[Any, Any, str, int]:
    import transformers as t

    tokenizer = _tokenizer(tokenizer_dir, ["<image>"])
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    size = 56 if family == "llava" else 28
    vision = {"model_type": "clip_vision_model", "image_size": size, "patch_size": 14, "hidden_size": 32,
              "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "projection_dim": 32}  # fmt: skip
    shared = {"text_config": _text_config(tokenizer, model_type="llama"), "vision_config": vision,
              "image_token_index": image_id, "vision_feature_select_strategy": "default", "vision_feature_layer": -2,
              "tie_word_embeddings": True}  # fmt: skip
    crop = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
    if family == "llava":
        config = t.LlavaConfig(image_seq_length=(size // 14) ** 2, **shared)
        images, processor_class = t.CLIPImageProcessorPil(**crop), t.LlavaProcessor
    else:
        pins = [[28, 56], [56, 28], [56, 56]]
        config = t.LlavaNextConfig(image_grid_pinpoints=pins, image_seq_length=4, **shared)
        images, processor_class = t.LlavaNextImageProcessorPil(image_grid_pinpoints=pins, **crop), t.LlavaNextProcessor
    processor = processor_class(image_processor=images, tokenizer=tokenizer, patch_size=14,
                                vision_feature_select_strategy="default", num_additional_image_tokens=1)  # fmt: skip
    return config, processor, "<image>", image_id


def _gemma3(family: str, tokenizer_dir: Path) -> tuple[Any, Any, str, int]:
    import transformers as t

    tokenizer = _tokenizer(tokenizer_dir, boi_token="<start_of_image>", eoi_token="<end_of_image>",
                           image_token="<image_soft_token>")  # fmt: skip
    text = _text_config(tokenizer, head_dim=16, sliding_window=64)
    vision = {
        "image_size": 64,
        "patch_size": 16,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vision_use_head": False,
    }  # the pooling head would get no gradient
    config = t.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id, image_token_index=tokenizer.image_token_id,
    )  # fmt: skip
    images = t.Gemma3ImageProcessorPil(size={"height": 64, "width": 64})
    processor = t.Gemma3Processor(image_processor=images, tokenizer=tokenizer, image_seq_length=4)
    return config, processor, "<start_of_image>", tokenizer.image_token_id


FAMILIES: dict[str, Callable[[str, Path], tuple[Any, Any, str, int]]] = {
    "qwen2_vl": _qwen, "qwen2_5_vl": _qwen, "qwen3_vl": _qwen, "llava": _llava, "llava_next": _llava,
    "gemma3": _gemma3,
}  # fmt: skip
"""Family -> (config, processor, the text standing for one image, the image token id)."""


def save_tiny_vlm(folder: Path, family: str, tokenizer_dir: Path) -> TinyVlm:
    """A ``family`` VLM with random weights (seed 0) and its processor, saved in ``folder`` (about 3M parameters,
    text width 64, 2 layers)."""
    import torch
    from transformers import AutoModelForImageTextToText

    config, processor, image_text, image_token_id = FAMILIES[family](family, tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    with torch.no_grad():  # Gemma 3's projector starts at zero, which would hide every image from the loss
        for name, weight in model.named_parameters():
            if "multi_modal_projector" in name and weight.ndim >= 2 and not weight.any():
                weight.normal_(std=0.02)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return TinyVlm(folder, image_text, image_token_id)
