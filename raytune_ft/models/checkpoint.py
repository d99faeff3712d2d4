"""The on-disk layout of a raytune_ft checkpoint, shared by training (writer) and chat/serve (readers).

A checkpoint folder is self-contained: LoRA adapter files *or* full HF weights, the tokenizer
with the chat template used in training, the resolved job config, and ``trainer_state.json``. (An
adapter trained from several ``adapter.init_from`` adapters also needs the ones merged into its base:
its config names their folders.)
Runs keep many checkpoints; readers pick the one with the highest global step.
"""

from __future__ import annotations

import json
from pathlib import Path

from raytune_ft.config import InputError

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CONFIG_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "VLLM_LORA_RANKS",
    "CheckpointError",
    "adapter_rank",
    "checkpoint_step",
    "is_adapter_checkpoint",
    "latest_checkpoint",
    "vllm_lora_rank",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CONFIG_FILE = "raytune_ft.yaml"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM accepts."""


class CheckpointError(InputError):
    """A path that is not (and does not contain) a raytune_ft checkpoint."""


def checkpoint_step(folder: Path) -> int:
    """Global step recorded in a checkpoint folder."""
    return int(json.loads((folder / STATE_FILE).read_text())["global_step"])


def is_adapter_checkpoint(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else its newest checkpoint (a run directory)."""
    folder = Path(path).expanduser()
    if (folder / STATE_FILE).is_file():
        return folder
    found = [child for child in folder.glob("*/") if (child / STATE_FILE).is_file()] if folder.is_dir() else []
    if not found:
        raise CheckpointError(f"{folder}: no raytune_ft checkpoint here (expected {STATE_FILE} in it or a subfolder)")
    return max(found, key=checkpoint_step)


def adapter_rank(folder: Path) -> int:
    """The LoRA rank recorded in an adapter checkpoint."""
    try:
        return int(json.loads((folder / ADAPTER_CONFIG).read_text())["r"])
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: cannot read the LoRA rank ({err})") from None


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``."""
    return next((allowed for allowed in VLLM_LORA_RANKS if allowed >= rank), rank)
