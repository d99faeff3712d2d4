"""The fallback engine: the same OpenAI routes served by Hugging Face ``generate`` when vLLM is absent.

One Ray Serve deployment holds the model (and LoRA adapters through peft, loaded on first use, the
least recently used evicted) and answers ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions`` (SSE streaming too) and ``/health`` with the same checks as the vLLM app
(``gate.py``). Requests run one at a time per replica: it is a fallback for machines without vLLM
and for tests, not a throughput engine.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.deployment import Application

from raytune_ft.models.source import resolve_model

from .adapters import chat_template, saved_stop_ids
from .gate import BearerKeyMiddleware, RequestGate, RequestRejected
from .plan import ServePlan, replica_options

__all__ = ["GenerationRequest", "HFServer", "build_hf_application"]


class GenerationRequest(BaseModel):
    """The OpenAI request fields the fallback honours; others are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def build_hf_application(plan: ServePlan) -> Application:
    """The fallback's Serve application for ``plan``."""
    app = FastAPI()
    if plan.api_key_digest is not None:
        app.add_middleware(BearerKeyMiddleware, digest=plan.api_key_digest)
    routes = {"health": app.get("/health"), "models": app.get("/v1/models"),
              "chat": app.post("/v1/chat/completions"), "completions": app.post("/v1/completions")}  # fmt: skip
    routed = type("HFServer", (HFServer,), {name: route(getattr(HFServer, name)) for name, route in routes.items()})
    deployment: Any = serve.ingress(app)(routed)
    cfg = plan.serve
    actor = {"num_cpus": cfg.cpus_per_replica, "num_gpus": 1 if cfg.use_gpu else 0}
    options: Any = serve.deployment(deployment, name="HFServer", ray_actor_options=actor, **replica_options(cfg))
    application: Application = options.bind(plan)
    return application


class HFServer:
    def __init__(self, plan: ServePlan) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        self.plan = plan
        self.gate = RequestGate(plan.catalog, plan.serve.max_tokens_limit)
        trust = plan.trust_remote_code
        folder = resolve_model(plan.model)  # this node's copy, from its own cache (fetched once per node)
        self.tokenizer_dir = Path(plan.tokenizer_dir) if plan.tokenizer_dir else folder
        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir, trust_remote_code=trust)
        model: Any = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype[plan.serve.dtype], trust_remote_code=trust
        )
        self.model: Any = model.to("cuda" if plan.serve.use_gpu else "cpu").eval()
        self.adapters: OrderedDict[str, str] = OrderedDict()  # model id -> peft adapter name, oldest first
        self.busy = asyncio.Lock()

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "models": [self.plan.model_id]}

    async def models(self) -> dict[str, Any]:
        ids = [self.plan.model_id, *self.plan.catalog.model_ids()]
        return {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "raytune_ft"} for i in ids]}

    async def chat(self, request: Request) -> Any:
        return await self._answer(request, "chat")

    async def completions(self, request: Request) -> Any:
        return await self._answer(request, "text")

    async def _answer(self, request: Request, kind: Literal["chat", "text"]) -> Any:
        try:
            body = GenerationRequest.model_validate(await request.json())
            if (body.messages is None) == (kind == "chat") or (kind == "text" and body.prompt is None):
                raise RequestRejected(400, "a chat request needs messages; a completion request needs a prompt")
            if body.stream and body.n > 1:
                raise RequestRejected(400, "this engine streams one choice; use n=1 or stream=false")
            self.gate.check_limit(body.max_completion_tokens or body.max_tokens)
            model_id, folder = self.gate.resolve(body.model or self.plan.model_id)
            prompt_ids = self._encode(body, kind, folder)
        except ValidationError as err:
            return JSONResponse(RequestRejected(400, str(err)).body(), status_code=400)
        except RequestRejected as err:
            return JSONResponse(err.body(), status_code=err.status)
        ids = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time())}
        meta = {**ids, "model": model_id, "kind": kind}
        if body.stream:
            return StreamingResponse(self._stream(body, prompt_ids, folder, meta), media_type="text/event-stream")
        async with self.busy:
            outputs = await asyncio.to_thread(self._generate, body, prompt_ids, folder)
        texts = [(_cut_at_stop(str(self.tokenizer.decode(ids, skip_special_tokens=True)), body.stops), why)
                 for ids, why in outputs]  # fmt: skip
        return _response(meta, texts, _usage(len(prompt_ids), sum(len(ids) for ids, _ in outputs)))

    def _encode(self, body: GenerationRequest, kind: str, folder: Path | None) -> list[int]:
        if kind == "text":
            ids = self.tokenizer(body.prompt)["input_ids"]
        else:
            template = chat_template(folder) if folder is not None else None
            messages: Any = body.messages
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = self.plan.serve.max_model_len
        if limit is not None and len(ids) >= limit:
            raise RequestRejected(
                400, f"the prompt has {len(ids)} tokens; this model's maximum context length is {limit} tokens"
            )
        return list(ids)

    def _generate(
        self, body: GenerationRequest, prompt_ids: list[int], folder: Path | None, streamer: Any = None
    ) -> list[tuple[list[int], str]]:
        """(generated ids, finish reason) per choice."""
        import torch

        if body.seed is not None:
            torch.manual_seed(body.seed)
        budget = body.max_completion_tokens or body.max_tokens or self.plan.serve.max_tokens_limit
        if self.plan.serve.max_model_len is not None:
            budget = min(budget, self.plan.serve.max_model_len - len(prompt_ids))
        sampling = {"do_sample": True, "temperature": body.temperature, "top_p": body.top_p} if body.temperature else {}
        ends = {self.tokenizer.eos_token_id, *_as_list(self.model.generation_config.eos_token_id)}
        stop_ids = sorted(ends.union(saved_stop_ids(folder or self.tokenizer_dir)) - {None})
        inputs = torch.tensor([prompt_ids], device=self.model.device)
        with torch.inference_mode(), self._adapter(folder):
            output = self.model.generate(
                input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=budget,
                num_return_sequences=body.n, eos_token_id=stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                stop_strings=body.stops or None, tokenizer=self.tokenizer, streamer=streamer, **sampling,
            )  # fmt: skip
        choices = []
        for row in output[:, len(prompt_ids) :].tolist():
            ended = next((i for i, token in enumerate(row) if token in stop_ids), None)
            tokens = row[: ended + 1] if ended is not None else row
            text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))
            stopped = ended is not None or any(stop in text for stop in body.stops)
            choices.append((tokens, "stop" if stopped else "length"))
        return choices

    async def _stream(
        self, body: GenerationRequest, prompt_ids: list[int], folder: Path | None, meta: dict[str, Any]
    ) -> AsyncIterator[str]:
        from transformers import TextIteratorStreamer

        async with self.busy:
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            result: list[list[tuple[list[int], str]]] = []
            worker = threading.Thread(target=lambda: result.append(self._generate(body, prompt_ids, folder, streamer)))
            worker.start()
            sent = ""
            pieces = iter(streamer)
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                text = _cut_at_stop(sent + piece, body.stops)
                if len(text) > len(sent):
                    yield _event(_chunk(meta, text[len(sent) :], None))
                    sent = text
            await asyncio.to_thread(worker.join)
        (tokens, finish), *_ = result[0]
        yield _event(_chunk(meta, "", finish))
        if (body.stream_options or {}).get("include_usage"):
            yield _event({**_chunk(meta, "", None), "choices": [], "usage": _usage(len(prompt_ids), len(tokens))})
        yield "data: [DONE]\n\n"

    def _adapter(self, folder: Path | None) -> Any:
        """A context where the model runs with ``folder``'s adapter, or with none (the base)."""
        import contextlib

        from peft import PeftModel

        if folder is None:
            return self.model.disable_adapter() if isinstance(self.model, PeftModel) else contextlib.nullcontext()
        key = str(folder)
        if key not in self.adapters:
            name = f"adapter{uuid.uuid4().hex[:8]}"  # peft names become module keys: no dots
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(key, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, key, adapter_name=name)
            self.adapters[key] = name
            if len(self.adapters) > self.plan.serve.max_adapters_per_replica:
                _, evicted = self.adapters.popitem(last=False)
                self.model.delete_adapter(evicted)
        self.adapters.move_to_end(key)
        self.model.set_adapter(self.adapters[key])
        return contextlib.nullcontext()


def _response(meta: dict[str, Any], texts: list[tuple[str, str]], usage: dict[str, int]) -> dict[str, Any]:
    chat = meta["kind"] == "chat"
    choices = [{"index": i, "finish_reason": finish, **_content(chat, text)} for i, (text, finish) in enumerate(texts)]
    return {"id": meta["id"], "object": "chat.completion" if chat else "text_completion", "created": meta["created"],
            "model": meta["model"], "choices": choices, "usage": usage}  # fmt: skip


def _cut_at_stop(text: str, stops: list[str]) -> str:
    cuts = [text.index(stop) for stop in stops if stop in text]
    return text[: min(cuts)] if cuts else text


def _content(chat: bool, text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}} if chat else {"text": text}


def _chunk(meta: dict[str, Any], text: str, finish: str | None) -> dict[str, Any]:
    if meta["kind"] == "chat":
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
        return {"id": meta["id"], "object": "chat.completion.chunk", "created": meta["created"],
                "model": meta["model"], "choices": [choice]}  # fmt: skip
    choice = {"index": 0, "text": text, "finish_reason": finish}
    return {"id": meta["id"], "object": "text_completion", "created": meta["created"], "model": meta["model"],
            "choices": [choice]}  # fmt: skip


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
