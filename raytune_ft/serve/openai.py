"""The Ray Serve application behind ``raytune-ft serve``: Ray's OpenAI ingress and vLLM server, plus
what they lack for a fine-tuning framework.

``ray.serve.llm`` already does the OpenAI protocol (chat, completions, SSE streaming with usage),
vLLM replicas, multiplexed LoRA routing and autoscaling; this module builds on it and adds:

- adapters from our own checkpoints on local or shared disk, addressed ``BASE:RUN[:STEP]``
  (Ray's dynamic LoRA loading reads only from cloud buckets), new checkpoints servable at once;
- the chat template each checkpoint was trained with;
- an optional API key, compared in constant time, on every route but ``/health``;
- a ``max_tokens`` cap that answers HTTP 400, and ``/health``.

Ray's public API has no hooks for these, so the ingress and loader subclass classes from
``ray.llm._internal`` (pinned with ray==2.60.0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from ray import serve
from ray.llm._internal.common.models import global_id_manager
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAIHTTPException,
    to_model_metadata,
)
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS, OpenAiIngress, make_fastapi_ingress
from ray.llm._internal.serve.core.ingress.ingress import init as new_fastapi_app
from ray.llm._internal.serve.core.server.builder import build_llm_deployment
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle
from ray.serve.llm import LLMConfig
from starlette.responses import Response

from .adapters import AdapterCatalog, chat_template
from .gate import BearerKeyMiddleware, RequestGate, RequestRejected
from .plan import ServePlan

__all__ = ["ENGINE_ENV", "CheckpointAdapterLoader", "RaytuneIngress", "build_application", "llm_config"]

ENGINE_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def build_application(plan: ServePlan) -> Application:
    """The Serve application for ``plan``: one engine deployment behind our OpenAI ingress."""
    config = llm_config(plan)
    loader = functools.partial(CheckpointAdapterLoader, plan.catalog)
    server = build_llm_deployment(config, bind_kwargs={"model_downloader": loader})
    app = new_fastapi_app()
    if plan.api_key_digest is not None:
        app.add_middleware(BearerKeyMiddleware, digest=plan.api_key_digest)
    endpoints = {name: DEFAULT_ENDPOINTS[name] for name in ("models", "model_data", "completions", "chat")}
    ingress = make_fastapi_ingress(RaytuneIngress, endpoint_map={**endpoints, "health": _health_route}, app=app)
    # The ingress only relays requests; a CPU for it would starve a small machine's engine replicas.
    options = {**RaytuneIngress.get_deployment_options([config]), "ray_actor_options": {"num_cpus": 0}}
    deployment: Any = serve.deployment(ingress, name="OpenAiIngress", **options)
    application: Application = deployment.bind(
        llm_deployments={plan.model_id: server},
        model_cards={plan.model_id: to_model_metadata(plan.model_id, config)},
        catalog=plan.catalog,
        max_tokens_limit=plan.serve.max_tokens_limit,
        tokenizer_dir=str(plan.tokenizer_dir),
    )
    return application


def llm_config(plan: ServePlan) -> LLMConfig:
    """Ray Serve LLM's config for ``plan``'s engine replicas."""
    serve_cfg = plan.serve
    engine: dict[str, Any] = {
        "dtype": serve_cfg.dtype,
        "enforce_eager": serve_cfg.enforce_eager,
        "tokenizer": str(plan.tokenizer_dir),  # the chat template the checkpoint was trained with
        # A request without max_tokens generates at most the limit (vLLM's generation-config default).
        "override_generation_config": {"max_new_tokens": serve_cfg.max_tokens_limit},
    }
    if serve_cfg.max_model_len is not None:
        engine["max_model_len"] = serve_cfg.max_model_len
    if plan.max_lora_rank is not None:
        engine |= {
            "enable_lora": True,
            "max_lora_rank": plan.max_lora_rank,
            "max_loras": serve_cfg.max_adapters_per_replica,
            # The ingress sets each adapter's own chat template and drops any a client sends.
            "trust_request_chat_template": True,
        }
    env = dict(ENGINE_ENV)
    if not serve_cfg.use_gpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{serve_cfg.kv_cache_gib:g}"
    replicas: dict[str, Any] = (
        {"autoscaling_config": serve_cfg.autoscaling.model_dump()}
        if serve_cfg.autoscaling is not None
        else {"num_replicas": serve_cfg.num_replicas}
    )
    # Ray adds a replica's own CPUs to its placement bundle: 0 here keeps the bundle at cpus_per_replica.
    deployment = {**replicas, "ray_actor_options": {"num_cpus": 0}}
    return LLMConfig(
        model_loading_config={"model_id": plan.model_id, "model_source": str(plan.model_dir)},
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


class RaytuneIngress(OpenAiIngress):  # type: ignore[misc]
    """Ray's OpenAI ingress with our adapter names, chat templates, token limit and health route."""

    def __init__(
        self,
        llm_deployments: dict[str, DeploymentHandle[Any]],
        model_cards: dict[str, ModelCard],
        *,
        catalog: AdapterCatalog,
        max_tokens_limit: int,
        tokenizer_dir: str,
    ) -> None:
        super().__init__(llm_deployments, model_cards)
        self._catalog = catalog
        self._gate = RequestGate(catalog, max_tokens_limit)
        self._template = chat_template(Path(tokenizer_dir))

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        self._check_limit(body.max_completion_tokens or body.max_tokens)
        body.model, folder = self._resolve(body.model)
        template = chat_template(folder) if folder is not None else None
        body.chat_template = template if template != self._template else None
        return await super().chat(body, request)

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        self._check_limit(body.max_tokens)
        body.model, _ = self._resolve(body.model)
        return await super().completions(body, request)

    async def model(self, model_id: str) -> ModelCard | None:
        if model_id in self._model_cards or model_id not in self._catalog.model_ids():
            return await super().model(model_id)
        base = self._model_cards[self._catalog.base]
        return ModelCard(id=model_id, object="model", owned_by=base.owned_by, permission=list(base.permission),
                         metadata={**base.metadata, "base_model_id": self._catalog.base})  # fmt: skip

    async def models(self) -> ModelList:
        cards = [await self.model(model_id) for model_id in [*self._model_cards, *self._catalog.model_ids()]]
        return ModelList(data=[card for card in cards if card is not None])

    async def health(self) -> JSONResponse:
        """200 when every engine deployment answers its health check, else 503."""
        try:
            for handle in self._default_serve_handles.values():
                await handle.check_health.remote()
        except Exception as err:
            return JSONResponse({"status": "unhealthy", "error": str(err)[:500]}, status.HTTP_503_SERVICE_UNAVAILABLE)
        return JSONResponse({"status": "ok", "models": list(self._model_cards)})

    def _check_limit(self, asked: int | None) -> None:
        try:
            self._gate.check_limit(asked)
        except RequestRejected as err:
            raise OpenAIHTTPException(message=err.message, status_code=err.status, type=err.kind) from None

    def _resolve(self, model: str | None) -> tuple[str | None, Path | None]:
        try:
            return self._gate.resolve(model)
        except RequestRejected as err:
            raise OpenAIHTTPException(message=err.message, status_code=err.status, type=err.kind) from None


def _health_route(app: FastAPI) -> Callable[..., Any]:
    return app.get("/health")
