"""The per-batch work of evaluation, as Ray Data callable classes: each actor loads the model once.

``map_batches`` runs as many of them as ``eval.num_workers`` asks, on whatever CPUs (or GPUs) the
cluster has spare, and streams rows through them; the driver only adds up what they return.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from raytune_ft.config import ConfigWarning, JobConfig
from raytune_ft.data import IGNORE_INDEX, pad_batch
from raytune_ft.data.templates import saved_stop_token_ids
from raytune_ft.models import load_for_inference
from raytune_ft.models.vllm_engine import start_vllm, vllm_target

__all__ = [
    "GENERATORS",
    "ChoiceScorer",
    "EvalModel",
    "Generator",
    "LossScorer",
    "VllmGenerator",
    "choice_prompt",
    "split_prompt",
]

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class EvalModel:
    """What to load in each actor: a model source and/or an adapter checkpoint, or a config's model with
    its ``adapter.init_from`` (``load_for_inference``)."""

    model: str | None
    adapter: str | None
    config: JobConfig | None = None
    """Its ``model`` section (code trust, cache) applies; with no model and adapter, its ``init_from`` too."""

    def load(self) -> tuple[Any, Any]:
        with warnings.catch_warnings():  # the driver has warned about trust_remote_code already
            warnings.simplefilter("ignore", ConfigWarning)
            return load_for_inference(self.model, self.adapter, self.config)


class LossScorer:
    """Summed token loss and token count per batch of tokenized rows (``input_ids``, ``labels``)."""

    def __init__(self, model: EvalModel) -> None:
        self.model, self.tokenizer = model.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        tensors = pad_batch(list(batch["input_ids"]), list(batch["labels"]), self.tokenizer.pad_token_id)
        with torch.no_grad():
            logits = self.model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
        targets = tensors["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        counted = targets != IGNORE_INDEX
        return {"loss_sum": (losses * counted).sum(1).numpy(), "tokens": counted.sum(1).numpy()}


def split_prompt(input_ids: Any, labels: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, reference ids) of a tokenized single-answer row: the reference is the first learned span."""
    ids, labs = [int(i) for i in input_ids], [int(v) for v in labels]
    start = next((i for i, v in enumerate(labs) if v != IGNORE_INDEX), len(labs))
    end = next((i for i in range(start, len(labs)) if labs[i] == IGNORE_INDEX), len(labs))
    return ids[:start], ids[start:end]


class Generator:
    """Greedy (or sampled) continuations of the prompts in tokenized rows, with their references, on HF."""

    def __init__(self, model: EvalModel, max_new_tokens: int, temperature: float) -> None:
        self.model, self.tokenizer = model.load()
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        import transformers

        self.engine_name = f"transformers {transformers.__version__}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        pairs = [split_prompt(i, lab) for i, lab in zip(batch["input_ids"], batch["labels"], strict=True)]
        width = max(len(prompt) for prompt, _ in pairs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(pairs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, (prompt, _) in enumerate(pairs):  # left padding: every prompt ends where generation starts
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        sampling = (
            {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        )
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens, pad_token_id=pad,
                eos_token_id=_stops(self.tokenizer, self.model.generation_config.eos_token_id), **sampling,
            )  # fmt: skip
        predictions = [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
        return _generated(self.tokenizer, pairs, predictions, self.engine_name)


class VllmGenerator:
    """The same continuations with vLLM's batched engine (one per actor); an adapter is applied as a LoRA request."""

    def __init__(self, model: EvalModel, max_new_tokens: int, temperature: float) -> None:
        from vllm import SamplingParams

        base, adapter = vllm_target(model.model, model.adapter, model.config)
        engine = start_vllm(base, adapter)
        self.engine, self.lora, self.tokenizer = engine.llm, engine.lora, engine.tokenizer
        self.engine_name = engine.name
        stops = _stops(self.tokenizer)
        self.sampling = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=0, stop_token_ids=stops)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pairs = [split_prompt(i, lab) for i, lab in zip(batch["input_ids"], batch["labels"], strict=True)]
        prompts: list[Any] = [{"prompt_token_ids": prompt} for prompt, _ in pairs]
        outputs = self.engine.generate(prompts, self.sampling, lora_request=self.lora, use_tqdm=False)
        decode = self.tokenizer.decode
        predictions = [decode(out.outputs[0].token_ids, skip_special_tokens=True).strip() for out in outputs]
        return _generated(self.tokenizer, pairs, predictions, self.engine_name)


def _stops(tokenizer: Any, configured: int | list[int] | None = None) -> list[int]:
    """Where generated answers end: the eos, the template's stop words saved with the tokenizer (a ``yi``
    answer ends with ``<|im_end|>``), and the model's own eos ids."""
    extra = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return sorted({tokenizer.eos_token_id, *saved_stop_token_ids(tokenizer), *extra} - {None})


def _generated(
    tokenizer: Any, pairs: list[tuple[list[int], list[int]]], predictions: list[str], engine: str
) -> dict[str, np.ndarray]:
    """Columns of one generated batch: the prompt as the model saw it (special tokens kept, as LLaMA-Factory's
    generated_predictions.jsonl shows it), the prediction and the reference answer."""
    prompts = [tokenizer.decode(prompt, skip_special_tokens=False) for prompt, _ in pairs]
    references = [tokenizer.decode(reference, skip_special_tokens=True).strip() for _, reference in pairs]
    return {
        "prompt": np.array(prompts, dtype=object),
        "prediction": np.array(predictions, dtype=object),
        "reference": np.array(references, dtype=object),
        "engine": np.array([engine] * len(predictions), dtype=object),
    }


GENERATORS: dict[str, type] = {"hf": Generator, "vllm": VllmGenerator}
"""``eval.engine`` -> the generation scorer."""


def choice_prompt(tokenizer: Any, question: str, choices: list[str]) -> list[int]:
    """The question and lettered choices as a user turn, then the assistant's turn opened on 'Answer:'."""
    lines = [question.strip(), *(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))]
    content = "\n".join(lines) + "\nAnswer with the letter of the correct choice."
    messages = [{"role": "user", "content": content}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(rendered + "Answer:", add_special_tokens=False).input_ids)


class ChoiceScorer:
    """Multiple choice by log-likelihood: the choice letter the model finds likeliest next (MMLU's protocol)."""

    def __init__(self, model: EvalModel) -> None:
        self.model, self.tokenizer = model.load()
        self.letter_ids = [self._letter_id(letter) for letter in LETTERS]

    def _letter_id(self, letter: str) -> int:
        ids = self.tokenizer(f" {letter}", add_special_tokens=False).input_ids
        return int(ids[-1])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        picked = []
        for question, choices in zip(batch["question"], batch["choices"], strict=True):
            prompt = torch.tensor([choice_prompt(self.tokenizer, str(question), list(choices))])
            with torch.no_grad():
                last = self.model(input_ids=prompt).logits[0, -1].float()
            scores = last[self.letter_ids[: len(choices)]]
            picked.append(LETTERS[int(scores.argmax())])
        correct = [p == str(a) for p, a in zip(picked, batch["answer"], strict=True)]
        return {"picked": np.array(picked, dtype=object), "correct": np.array(correct), "subject": batch["subject"]}
