"""Value heads on a causal LM: reward models (``stage: rm``) and PPO's critic, and what saves, loads and
scores with them.

The score of a sequence is a linear head on the LM's last hidden state at its last real token (as
LLaMA-Factory's and TRL's value-head models read it). PPO's policy carries the same head as its critic,
read at every position: the value of the answer so far. The LM keeps its own form (LoRA adapter or full
weights, saved as for any stage), and the head is one more file in the checkpoint: a reward model's is
``value_head.safetensors``; the critic's sits in ``critic/``, out of the way of anything that loads the
policy's ``*.safetensors`` (serving, export, the rollout engines).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_ft.config import AdapterConfig, ModelConfig, load_config

from .checkpoint import ADAPTER_CONFIG, CONFIG_FILE, CheckpointError, is_adapter_checkpoint, latest_checkpoint

if TYPE_CHECKING:
    import torch

__all__ = [
    "CRITIC_WEIGHTS",
    "VALUE_HEAD_WEIGHTS",
    "RewardScorer",
    "attach_head",
    "reward_model_checkpoint",
    "value_head_model",
]

VALUE_HEAD_WEIGHTS = "value_head.safetensors"
"""A reward model's score head, beside its LM's weights."""

CRITIC_WEIGHTS = "critic/value_head.safetensors"
"""PPO's critic head, in a folder of its own."""

HEAD_FILES = {"rm": VALUE_HEAD_WEIGHTS, "ppo": CRITIC_WEIGHTS}
"""The stages whose model carries a value head, and the checkpoint file that holds it."""

LLAMAFACTORY_HEAD_BIN = "value_head.bin"
"""LLaMA-Factory's reward-model head when it saved without safetensors (its safetensors file has our name)."""

LLAMAFACTORY_HEAD_PREFIX = "v_head.summary."
"""How LLaMA-Factory (TRL's value-head model) names the head's ``weight`` and ``bias``."""


def value_head_model(lm: torch.nn.Module, stage: str = "rm") -> torch.nn.Module:
    """``lm`` (plain or peft) with a freshly initialised scalar head; the head always trains. ``rm`` scores
    whole rows; ``ppo`` returns the LM's output with a value at every position (``values``) beside the logits."""
    model: torch.nn.Module = (_policy_value_class() if stage == "ppo" else _value_head_class())(lm)
    return model


@functools.cache
def _value_head_class() -> Any:
    """Defined on first use, so importing this package never imports torch."""
    import torch

    class ValueHeadModel(torch.nn.Module):
        """Scores rows: ``forward(input_ids, attention_mask) -> (rows,)`` float32 rewards."""

        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.lm = lm
            self.config = lm.config  # model_type and hidden_size, as a transformers model has them
            hidden = int(lm.config.hidden_size)
            dtype = next(lm.parameters()).dtype
            self.value_head = torch.nn.Linear(hidden, 1, dtype=dtype if dtype.is_floating_point else None)
            torch.nn.init.normal_(self.value_head.weight, std=1 / (hidden + 1) ** 0.5)
            torch.nn.init.zeros_(self.value_head.bias)

        head_file = VALUE_HEAD_WEIGHTS

        def disable_adapter(self) -> Any:
            """The LM's adapters switched off (a peft LM): the reference model of a LoRA run."""
            return self.lm.disable_adapter()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=True,
                use_cache=False,
                logits_to_keep=1,  # the LM head is not needed: one position keeps it cheap
            )
            hidden = out.hidden_states[-1]
            last = attention_mask.sum(-1) - 1  # right padding: the last real token of each row
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            scores: torch.Tensor = self.value_head(picked.to(self.value_head.weight.dtype)).squeeze(-1).float()
            return scores

        def language_weights(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            """The LM's part of this model's ``state_dict``, by the LM's own names (without the value head)."""
            return _strip(state_dict, "lm.")

        def save_pretrained(self, folder: Path, state_dict: dict[str, torch.Tensor]) -> None:
            """The LM as any checkpoint holds it, plus the head in ``value_head.safetensors``."""
            from safetensors.torch import save_file

            from .pissa import save_weights

            save_weights(self.lm, folder, self.language_weights(state_dict))
            head = {k: v.contiguous() for k, v in _strip(state_dict, "value_head.").items()}
            path = Path(folder) / self.head_file
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(head, str(path))

    return ValueHeadModel


@functools.cache
def _policy_value_class() -> Any:
    class PolicyValueModel(_value_head_class()):  # type: ignore[misc]
        """PPO's policy and critic on one LM: ``forward`` returns the LM's output (logits at
        ``logits_to_keep``) plus ``values``, float32 (rows, seq), the value head at every position."""

        head_file = CRITIC_WEIGHTS
        critic_on = True

        @contextlib.contextmanager
        def disable_adapter(self) -> Iterator[None]:
            """The reference model of a LoRA run: the LM with its adapters off, and no critic (its forward
            returns the LM's output alone, without keeping every layer's hidden states for the head)."""
            with self.lm.disable_adapter():
                self.critic_on = False
                try:
                    yield
                finally:
                    self.critic_on = True

        def forward(self, input_ids: torch.Tensor, **inputs: Any) -> Any:  # type: ignore[override]
            if not self.critic_on:
                return self.lm(input_ids=input_ids, **inputs)
            out = self.lm(input_ids=input_ids, output_hidden_states=True, **inputs)
            hidden = out.hidden_states[-1]
            out["values"] = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
            return out

    return PolicyValueModel


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def attach_head(model: torch.nn.Module, stage: str, checkpoint: Path | None = None) -> torch.nn.Module:
    """The model a stage trains: a value-head model for ``rm`` and ``ppo`` (its head restored from
    ``checkpoint`` when resuming), the LM itself otherwise."""
    if stage not in HEAD_FILES:
        return model
    scored = value_head_model(model, stage)
    if checkpoint is not None:
        load_value_head(scored, checkpoint)
    return scored


def load_value_head(model: torch.nn.Module, checkpoint: Path) -> None:
    """The head of ``checkpoint`` into ``model``: ours, or a reward model's as LLaMA-Factory saved it."""
    name = str(model.head_file)
    path = _head_file(Path(checkpoint), name)
    if path is None:
        kind = "a PPO" if name == CRITIC_WEIGHTS else "a reward-model"
        raise CheckpointError(f"{checkpoint}: no {name}; it is not {kind} checkpoint")
    model.value_head.load_state_dict(_read_head(path))  # type: ignore[union-attr, operator]


def _head_file(checkpoint: Path, name: str) -> Path | None:
    for path in (checkpoint / name, *([checkpoint / LLAMAFACTORY_HEAD_BIN] if name == VALUE_HEAD_WEIGHTS else [])):
        if path.is_file():
            return path
    return None


def _read_head(path: Path) -> dict[str, torch.Tensor]:
    """A head's ``weight`` and ``bias``, from either file format and either naming."""
    import torch
    from safetensors.torch import load_file

    state = torch.load(path, map_location="cpu", weights_only=True) if path.suffix == ".bin" else load_file(path)
    return {key.removeprefix(LLAMAFACTORY_HEAD_PREFIX): value for key, value in state.items()}


class RewardScorer:
    """Scores conversations with a trained reward model (a checkpoint or run directory of ``stage: rm``).

    scorer = RewardScorer.load("saves/rm")
    scorer.score([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]])
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.tokenizer.padding_side = "right"  # the score is read at each row's last real token
        self.closing = self._turn_closing()

    @classmethod
    def load(cls, path: str | Path) -> RewardScorer:
        from .loading import load_base, load_causal_lm, load_tokenizer
        from .source import resolve_model

        checkpoint, model_cfg, adapter = _reward_model(path)
        lm: Any
        if is_adapter_checkpoint(checkpoint):
            from peft import PeftModel

            lm = PeftModel.from_pretrained(load_base(model_cfg, adapter), checkpoint)  # init_from's merged base
        else:
            lm = load_causal_lm(model_cfg, checkpoint)
        has_tokenizer = (checkpoint / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(
            checkpoint if has_tokenizer else resolve_model(model_cfg), trust_remote_code=model_cfg.trust_remote_code
        )
        return cls(attach_head(lm, "rm", checkpoint), tokenizer)

    def score_answers(self, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 8) -> list[float]:
        """One reward per answer to a prompt already rendered up to its generation prompt (special tokens kept, as
        the policy's template wrote it): the text is scored as the conversation it ends, closed the way this
        model's chat template closes an assistant turn."""
        texts = [prompt + answer + self.closing for prompt, answer in zip(prompts, answers, strict=True)]
        return self._score_texts(texts, batch_size)

    def _turn_closing(self) -> str:
        """What the chat template writes after an assistant's text (``<|im_end|>\\n`` for ChatML)."""
        marker = "\x00answer\x00"
        turn = [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}]
        text = str(self.tokenizer.apply_chat_template(turn, tokenize=False))
        return text[text.index(marker) + len(marker) :] if marker in text else ""

    def score(self, conversations: Sequence[Sequence[dict[str, str]]], batch_size: int = 8) -> list[float]:
        """One reward per conversation (rendered with the chat template the model was trained with)."""
        return self._score_texts([self.tokenizer.apply_chat_template(list(c), tokenize=False) for c in conversations],
                                 batch_size)  # fmt: skip

    def _score_texts(self, texts: Sequence[str], batch_size: int) -> list[float]:
        import torch

        scores: list[float] = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[i : i + batch_size]), add_special_tokens=False, padding=True, return_tensors="pt"
            )
            with torch.no_grad():
                scores += self.model(batch["input_ids"], batch["attention_mask"]).tolist()
        return scores


def reward_model_checkpoint(path: str | Path) -> Path:
    """The newest checkpoint of ``path`` (a checkpoint or run directory) of ``stage: rm``, or a reward model
    LLaMA-Factory trained (``stage: rm``: its output or ``checkpoint-N`` folder)."""
    return _reward_model(path)[0]


def _reward_model(path: str | Path) -> tuple[Path, ModelConfig, AdapterConfig]:
    """``reward_model_checkpoint``, and the base model and adapter settings it was trained on."""
    if (theirs := _llamafactory_reward_model(Path(path).expanduser())) is not None:
        return theirs
    checkpoint = latest_checkpoint(path)
    cfg = load_config(checkpoint / CONFIG_FILE)
    if cfg.method.stage != "rm":
        raise CheckpointError(
            f"{checkpoint}: trained with method.stage {cfg.method.stage}, not rm; a reward model comes from rm"
        )
    model = ModelConfig(
        source=cfg.model.source,
        dtype=cfg.model.dtype,
        trust_remote_code=cfg.model.trust_remote_code,
        cache_dir=cfg.model.cache_dir,
    )
    return checkpoint, model, cfg.adapter


def _llamafactory_reward_model(folder: Path) -> tuple[Path, ModelConfig, AdapterConfig] | None:
    """A reward model LLaMA-Factory saved: its head (``v_head.summary.*`` in ``value_head.safetensors``, or
    ``value_head.bin``) beside a LoRA adapter (on the base its ``adapter_config.json`` names) or a whole
    model; ``folder`` itself, else its newest ``checkpoint-N``. None for anything else."""
    numbered = [p for p in folder.glob("checkpoint-*/") if p.name.rpartition("-")[2].isdigit()]
    steps = sorted(numbered, key=lambda p: int(p.name.rpartition("-")[2]), reverse=True)
    for candidate in (folder, *steps):
        if (candidate / CONFIG_FILE).is_file() or not _is_llamafactory_head(candidate):
            continue
        if not is_adapter_checkpoint(candidate):
            return candidate, ModelConfig(source=str(candidate)), AdapterConfig(type="full")
        base = json.loads((candidate / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        if not base:
            raise CheckpointError(f"{candidate / ADAPTER_CONFIG}: names no base model (base_model_name_or_path)")
        return candidate, ModelConfig(source=str(base)), AdapterConfig()
    return None


def _is_llamafactory_head(folder: Path) -> bool:
    from safetensors import safe_open

    if (folder / LLAMAFACTORY_HEAD_BIN).is_file():
        return True
    if not (folder / VALUE_HEAD_WEIGHTS).is_file():
        return False
    with safe_open(str(folder / VALUE_HEAD_WEIGHTS), framework="pt") as head:
        return any(key.startswith(LLAMAFACTORY_HEAD_PREFIX) for key in head.keys())  # noqa: SIM118
