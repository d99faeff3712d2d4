"""The tiny vision-language models the multimodal tests train: each family builds offline, its processor turns
one image placeholder into the image's tokens, the image reaches the loss (its tower or projector gets gradients), and
model and processor load back from their folder with transformers' Auto classes and answer the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_vlms import FAMILIES, register_processors, save_tiny_vlm

IMAGE_TOKENS = {"qwen2_vl": 4, "qwen2_5_vl": 4, "qwen3_vl": 4, "llava": 16, "llava_next": 24, "gemma3": 4}
"""Tokens one 64 x 64 image becomes in each tiny family (Qwen: 4 to 16 by size; LLaVA-NeXT: base + crops)."""


def picture() -> object:
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_tiny_vlm_sees_its_image_and_loads_back(family: str, builtin_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    vlm = save_tiny_vlm(tmp_path / family, family, builtin_dir)
    register_processors()
    processor = AutoProcessor.from_pretrained(vlm.folder)
    model = AutoModelForImageTextToText.from_pretrained(vlm.folder)
    assert hasattr(processor, "image_processor"), type(processor)
    text = f"<|im_start|>user\n{vlm.image_text}What is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
    batch = processor(text=[text], images=[picture()], return_tensors="pt")
    image_tokens = batch["input_ids"] == vlm.image_token_id
    assert int(image_tokens.sum()) == IMAGE_TOKENS[family]
    labels = batch["input_ids"].masked_fill(image_tokens, -100)
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # The image path: the vision tower and the projector (Gemma 3's starts at zero, so only it moves at first).
    image_path = [
        p.grad for name, p in model.named_parameters() if not name.startswith(("model.language_model.", "lm_head"))
    ]
    assert image_path and any(g is not None and g.abs().sum() > 0 for g in image_path), (
        "the image never reached the loss"
    )
    model.eval()
    again = AutoModelForImageTextToText.from_pretrained(vlm.folder).eval()
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, model(**batch).logits, atol=1e-5)
