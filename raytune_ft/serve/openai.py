"""The Ray Serve application behind ``raytune-ft serve``: Ray Serve LLM's vLLM server, serving the
OpenAI routes itself, plus what Ray lacks for a fine-tuning framework.

``ray.serve.llm`` already does the OpenAI protocol (chat, completions, SSE streaming with usage),
vLLM replicas, LoRA loading and autoscaling; this module builds on it and adds:

- adapters from our own checkpoints on local or shared disk, addressed ``BASE:RUN[:STEP]``
  (Ray's dynamic LoRA loading reads only from cloud buckets), new checkpoints servable at once;
- the chat template each checkpoint was trained with;
- an optional API key, compared in constant time, on every route but ``/health``;
- a ``max_tokens`` cap that answers HTTP 400, and ``/health``.

Ray's public API has no hooks for these, so the server and loader subclass classes from
``ray.llm._internal`` (pinned with ray==2.60.0). Each replica answers HTTP itself (Serve's proxy
routes to it directly) instead of behind Ray's separate ingress deployment: one Ray hop fewer per
streamed token. Adapters load on whichever replica a request reaches (each holds up to
``serve.max_adapters_per_replica``), without Ray's adapter-aware routing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from ray.llm._internal.common.models import global_id_manager
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    OpenAIHTTPException,
    to_model_metadata,
)
from ray.llm._internal.serve.core.ingress.ingress import init as new_fastapi_app
from ray.llm._internal.serve.core.ingress.ingress import make_fastapi_ingress
from ray.llm._internal.serve.core.ingress.utils import (
    NON_STREAMING_RESPONSE_TYPES,
    _openai_json_wrapper,
    _peek_at_generator,
    _sanitize_chat_completion_request,
)
from ray.llm._internal.serve.core.protocol import RawRequestInfo
from ray.llm._internal.serve.core.server.builder import build_llm_deployment
from ray.llm._internal.serve.core.server.llm_server import LLMServer
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig
from starlette.responses import Response, StreamingResponse

from raytune_ft.config import ModelConfig
from raytune_ft.models.source import resolve_model

from .adapters import AdapterCatalog, chat_template, saved_stop_ids
from .cpus import keep_off_engine_cores
from .gate import BearerKeyMiddleware, RequestGate, RequestRejected
from .plan import ServePlan, replica_options

__all__ = [
    "ENGINE_ENV",
    "ROUTES",
    "CheckpointAdapterLoader",
    "OpenAIServer",
    "build_application",
    "llm_config",
    "on_node",
]

_log = logging.getLogger("ray.serve")

ENGINE_ENV = {"VLLM_NO_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
"""Set in every replica; ``HF_HUB_OFFLINE`` is passed on from the driver when set there (else each node
decides: a replica whose node lacks the pinned Hub model fetches it). vLLM itself only ever sees folders."""


ROUTES: dict[str, Callable[[FastAPI], Callable[..., Any]]] = {
    "models_route": lambda app: app.get("/v1/models", response_model=ModelList),
    "model_route": lambda app: app.get("/v1/models/{model:path}", response_model=ModelCard),
    "chat_route": lambda app: app.post("/v1/chat/completions"),
    "completions_route": lambda app: app.post("/v1/completions"),
    "health_route": lambda app: app.get("/health"),
}


def build_application(plan: ServePlan) -> Application:
    """The Serve application for ``plan``: vLLM replicas that each serve the OpenAI routes."""
    config = llm_config(plan)
    app = new_fastapi_app()  # Ray Serve LLM's app: error handling, CORS, request ids, metrics
    if plan.api_key_digest is not None:
        app.add_middleware(BearerKeyMiddleware, digest=plan.api_key_digest)
    server = make_fastapi_ingress(OpenAIServer, endpoint_map=ROUTES, app=app)
    loader = functools.partial(CheckpointAdapterLoader, plan.catalog)
    tokenizer_dir = str(plan.tokenizer_dir) if plan.tokenizer_dir is not None else None
    bind = {"catalog": plan.catalog, "max_tokens_limit": plan.serve.max_tokens_limit, "model": plan.model,
            "tokenizer_dir": tokenizer_dir, "model_downloader": loader,
            "isolate_engine_cores": plan.serve.isolates_cpu_engine}  # fmt: skip
    return build_llm_deployment(config, name_prefix="OpenAIServer:", bind_kwargs=bind, deployment_cls=server)


def llm_config(plan: ServePlan) -> LLMConfig:
    """Ray Serve LLM's config for ``plan``'s engine replicas. Its ``model_source`` is the pinned model source;
    each replica puts its own node's folders in its place before the engine starts (``on_node``)."""
    serve_cfg = plan.serve
    engine: dict[str, Any] = {
        "dtype": serve_cfg.dtype,
        "enforce_eager": serve_cfg.enforce_eager,
        # A request without max_tokens generates at most the limit (vLLM's generation-config default).
        "override_generation_config": {"max_new_tokens": serve_cfg.max_tokens_limit},
    }
    if serve_cfg.max_model_len is not None:
        engine["max_model_len"] = serve_cfg.max_model_len
    if plan.trust_remote_code:
        engine["trust_remote_code"] = True
    if plan.max_lora_rank is not None:
        engine |= {
            "enable_lora": True,
            "max_lora_rank": plan.max_lora_rank,
            "max_loras": serve_cfg.max_adapters_per_replica,
            # The server sets each adapter's own chat template and drops any a client sends.
            "trust_request_chat_template": True,
        }
    env = dict(ENGINE_ENV)
    if "HF_HUB_OFFLINE" in os.environ:
        env["HF_HUB_OFFLINE"] = os.environ["HF_HUB_OFFLINE"]
    if not serve_cfg.use_gpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{serve_cfg.kv_cache_gib:g}"
    # Ray adds a replica's own CPUs to its placement bundle: 0 here keeps the bundle at cpus_per_replica.
    deployment = {**replica_options(serve_cfg), "ray_actor_options": {"num_cpus": 0}}
    return LLMConfig(
        model_loading_config={"model_id": plan.model_id, "model_source": plan.model.source},
        engine_kwargs=engine | serve_cfg.engine_kwargs,
        lora_config={"max_num_adapters_per_replica": serve_cfg.max_adapters_per_replica}
        if plan.max_lora_rank is not None
        else None,
        # On GPUs Ray sizes the bundles from tensor/pipeline parallelism; on CPU one bundle per replica.
        placement_group_config=None if serve_cfg.use_gpu else {"bundles": [{"CPU": serve_cfg.cpus_per_replica}]},
        deployment_config=deployment,
        experimental_configs={"stream_batching_interval_ms": serve_cfg.stream_batch_ms},
        runtime_env={"env_vars": env},
    )


def on_node(config: LLMConfig, model_dir: Path, tokenizer_dir: Path) -> LLMConfig:
    """``config`` with the weights read from ``model_dir`` and the tokenizer (the chat template the checkpoint
    was trained with) from ``tokenizer_dir``: folders of the node the replica runs on."""
    fields = config.model_dump()  # a new config: the driver's copy caches an engine config naming its source
    fields["model_loading_config"]["model_source"] = str(model_dir)
    fields["engine_kwargs"].setdefault("tokenizer", str(tokenizer_dir))  # serve.engine_kwargs may name another
    return LLMConfig.model_validate(fields)


class CheckpointAdapterLoader(LoraModelLoader):  # type: ignore[misc]
    """Finds an adapter's checkpoint folder on disk, where Ray's loader downloads from a bucket."""

    def __init__(self, catalog: AdapterCatalog, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.catalog = catalog

    async def load_model_from_config(self, lora_model_id: str, llm_config: LLMConfig) -> DiskMultiplexConfig:
        if lora_model_id not in self.disk_cache:
            self.disk_cache[lora_model_id] = DiskMultiplexConfig(
                model_id=lora_model_id,
                max_total_tokens=None,
                local_path=str(self.catalog.folder(lora_model_id)),
                lora_assigned_int_id=global_id_manager.next(),
            )
        return self.disk_cache[lora_model_id]


class OpenAIServer(LLMServer):  # type: ignore[misc]
    """A vLLM replica that is its own OpenAI ingress: Ray's ``LLMServer`` (engine, LoRA loading,
    stream batching) with our routes, adapter names, chat templates and token limit in front.

    Serving the routes from the engine's own replica saves Ray's separate ingress deployment and so
    one Ray hop per streamed token, which on a small machine costs a quarter of the throughput.
    """

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        llm_config: LLMConfig,
        *,
        catalog: AdapterCatalog,
        max_tokens_limit: int,
        model: ModelConfig,
        tokenizer_dir: str | None,
        model_downloader: Any = None,
        isolate_engine_cores: bool = False,
    ) -> None:
        self._catalog = catalog
        self._gate = RequestGate(catalog, max_tokens_limit)
        folder = await asyncio.to_thread(resolve_model, model)  # this node's copy (fetched once per node)
        tokenizer = Path(tokenizer_dir) if tokenizer_dir is not None else folder
        llm_config = on_node(llm_config, folder, tokenizer)
        self._tokenizer_dir = tokenizer
        self._template = chat_template(tokenizer)
        self._card = to_model_metadata(llm_config.model_id, llm_config)
        await super().__init__(llm_config, model_downloader=model_downloader)
        if isolate_engine_cores:  # this replica and its engine's scheduler, now that the engine has started
            placement = keep_off_engine_cores(os.getpid(), include_root=True)
            _log.info("raytune_ft: %s", placement.describe() if placement else "engine cores not isolated")

    async def __serve_build_asgi_app__(self) -> Any:
        # LLMServer serves vLLM's own app (no key, no adapter names); serve ours, given to serve.ingress.
        return getattr(self, "_asgi_app")  # noqa: B009  (set by serve.ingress's wrapper class)

    async def chat_route(self, body: ChatCompletionRequest, request: Request) -> Response:
        self._check(self._gate.check_limit, body.max_completion_tokens or body.max_tokens)
        body.model, folder = self._check(self._gate.resolve, body.model)
        template = chat_template(folder) if folder is not None else None
        body.chat_template = template if template != self._template else None
        self._add_stops(body, folder)
        await self._use_adapter(body.model, folder)
        return await _respond(await self.chat(_sanitize_chat_completion_request(body), _raw(request)))

    async def completions_route(self, body: CompletionRequest, request: Request) -> Response:
        self._check(self._gate.check_limit, body.max_tokens)
        body.model, folder = self._check(self._gate.resolve, body.model)
        self._add_stops(body, folder)
        await self._use_adapter(body.model, folder)
        return await _respond(await self.completions(body, _raw(request)))

    async def models_route(self) -> ModelList:
        return ModelList(data=[self._card, *(self._adapter_card(i) for i in self._catalog.model_ids())])

    async def model_route(self, model: str) -> ModelCard:
        if model == self._card.id:
            return self._card
        if model in self._catalog.model_ids():
            return self._adapter_card(model)
        raise OpenAIHTTPException(message=f"model {model!r} is not served here", status_code=404, type="NotFoundError")

    async def health_route(self) -> JSONResponse:
        """200 when the engine answers its health check, else 503."""
        try:
            await self.check_health()
        except Exception as err:
            return JSONResponse({"status": "unhealthy", "error": str(err)[:500]}, status.HTTP_503_SERVICE_UNAVAILABLE)
        return JSONResponse({"status": "ok", "models": [self._card.id]})

    def _add_stops(self, body: ChatCompletionRequest | CompletionRequest, folder: Path | None) -> None:
        """Stop also where the template of the model's (or adapter's) training ends answers, besides the eos."""
        saved = saved_stop_ids(folder or self._tokenizer_dir)
        if saved:
            body.stop_token_ids = sorted({*(body.stop_token_ids or []), *saved})

    async def _use_adapter(self, model: str | None, folder: Path | None) -> None:
        """Load the request's adapter into the engine (once; the least recently used one is evicted)."""
        if model is not None and folder is not None:
            assert self.engine is not None, "the engine starts in __init__"
            await self.engine.resolve_lora(await self._load_model(model))

    def _adapter_card(self, model_id: str) -> ModelCard:
        return ModelCard(id=model_id, object="model", owned_by=self._card.owned_by,
                         permission=list(self._card.permission),
                         metadata={**self._card.metadata, "base_model_id": self._card.id})  # fmt: skip

    @staticmethod
    def _check(check: Callable[..., Any], *args: Any) -> Any:
        try:
            return check(*args)
        except RequestRejected as err:
            raise OpenAIHTTPException(message=err.message, status_code=err.status, type=err.kind) from None


async def _respond(stream: Any) -> Response:
    """The engine's output as an HTTP response: JSON, an error, or server-sent events."""
    first, stream = await _peek_at_generator(stream)
    head = first[0] if isinstance(first, list) else first
    if isinstance(head, ErrorResponse):
        raise OpenAIHTTPException(message=head.error.message, status_code=head.error.code, type=head.error.type)
    if isinstance(head, NON_STREAMING_RESPONSE_TYPES):
        return JSONResponse(content=head.model_dump())
    return StreamingResponse(_openai_json_wrapper(stream), media_type="text/event-stream")


def _raw(request: Request) -> RawRequestInfo:
    return RawRequestInfo.from_starlette_request(request)
