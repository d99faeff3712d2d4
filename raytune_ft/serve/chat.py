"""Chat with a model in the terminal: one prompt or an interactive multi-turn session.

The prompt is rendered with the tokenizer loaded from the checkpoint, i.e. the very chat template the
model was trained with. Two engines answer (LLaMA-Factory's ``infer_backend``): transformers streams
tokens to the terminal as they are generated; vLLM (``serve.engine: vllm``) starts its engine in this
process and prints each reply whole.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO

import torch

from raytune_ft.data.templates import saved_stop_token_ids

__all__ = ["Chatter", "HFChatter", "VllmChatter", "generate_reply", "interactive_chat"]


class Chatter(Protocol):
    """An engine that answers a conversation; ``on_text`` receives the reply as it is produced."""

    def reply(
        self, messages: list[dict[str, str]], max_new_tokens: int, temperature: float, on_text: Callable[[str], None]
    ) -> str: ...

    def close(self) -> None:
        """Stop what the engine started (processes), so a caller that goes on is not left holding them."""


class HFChatter:
    """transformers ``generate`` on a loaded model, streaming token by token."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def reply(
        self, messages: list[dict[str, str]], max_new_tokens: int, temperature: float, on_text: Callable[[str], None]
    ) -> str:
        return generate_reply(self.model, self.tokenizer, messages, max_new_tokens, temperature, on_text)

    def close(self) -> None:
        pass  # nothing outside this process


class VllmChatter:
    """vLLM's engine (``models.vllm_engine.VllmEngine``) on the same prompt tokens; the reply arrives whole."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def reply(
        self, messages: list[dict[str, str]], max_new_tokens: int, temperature: float, on_text: Callable[[str], None]
    ) -> str:
        from vllm import SamplingParams

        tokenizer = self.engine.tokenizer
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        stops = sorted({tokenizer.eos_token_id, *saved_stop_token_ids(tokenizer)} - {None})
        sampling = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=0, stop_token_ids=stops)
        output = self.engine.llm.generate([{"prompt_token_ids": list(ids)}], sampling, lora_request=self.engine.lora,
                                          use_tqdm=False)  # fmt: skip
        text = str(tokenizer.decode(output[0].outputs[0].token_ids, skip_special_tokens=True)).strip()
        on_text(text)
        return text

    def close(self) -> None:
        self.engine.close()


def generate_reply(
    model: Any,
    tokenizer: Any,
    messages: list[dict[str, str]],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """The assistant's reply to ``messages``; ``on_text`` receives text pieces as they decode."""
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    streamer = _CallbackStreamer(tokenizer, on_text) if on_text else None
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    )
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            # A named template (data.template) makes its end-of-turn marker the tokenizer's eos;
            # stop there as well as at the model's own eos.
            eos_token_id=_stop_ids(model, tokenizer),
            streamer=streamer,
            **sampling,
        )
    return str(tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


def interactive_chat(
    chatter: Chatter,
    system: str | None,
    max_new_tokens: int,
    temperature: float,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
) -> None:
    """Read user turns until EOF or ``exit``; ``clear`` forgets the history."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    stdout.write("Chat with the model: 'clear' resets the history, 'exit' or Ctrl-D quits.\n")
    while True:
        stdout.write("\nUser: ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "exit":
            return
        if line.strip() == "clear":
            del history[1 if system else 0 :]
            continue
        history.append({"role": "user", "content": line.strip()})
        stdout.write("Assistant: ")
        reply = chatter.reply(history, max_new_tokens, temperature, _writer(stdout))
        stdout.write("\n")
        history.append({"role": "assistant", "content": reply})


def _writer(stream: TextIO) -> Callable[[str], None]:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's own eos ids, the tokenizer's eos, and its template's stop words (a ``yi`` answer ends
    with ``<|im_end|>``, never with the eos)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return sorted({*ids, tokenizer.eos_token_id, *saved_stop_token_ids(tokenizer)} - {None})


class _CallbackStreamer:
    """Minimal ``generate`` streamer: decodes the new tokens incrementally and hands over the new text."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.tokens: list[int] = []
        self.printed = 0
        self.prompt_done = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_done:  # the first call carries the prompt
            self.prompt_done = True
            return
        self.tokens += value.reshape(-1).tolist()
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
            self.on_text(text[self.printed :])
            self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self.on_text(text[self.printed :])
