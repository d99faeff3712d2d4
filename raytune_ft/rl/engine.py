"""Rollout engines: vLLM as Ray actors that answer prompts with the newest published policy weights.

Every ``generate`` call names the policy version it needs. An engine behind that version pulls the
weights from the run's ``WeightStore`` first: a LoRA run's adapter files, which the engine merges into
its copy of the base weights (W + (alpha / r) B A, or DoRA's rescaled rows; with ``adapter.init_from``, the
base holds the adapters merged before the continued one), and loads into the running model; a whole model's
safetensors otherwise. Merging keeps generation at the base model's speed (vLLM's LoRA kernels ran 5x
slower on CPU) while only the adapter crosses the object store. So a replaced engine
(Ray restarts a killed actor, ``rollout.max_restarts``) catches up on its first call, and Ray runs the
call it lost again (``max_task_retries``). Under ``rollout.weight_sync: broadcast`` the whole weights arrive
instead through ``receive``, from a process group with the trainer's rank 0 (``raytune_ft.rl.sync``). The
engine runs vLLM in its own process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), where the weights can be loaded
into the model directly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft.config import JobConfig
from raytune_ft.models import adapter_folder, merged_adapters, resolve_model
from raytune_ft.models.vllm_engine import start_vllm

from .sync import EngineBehind, GroupAddress, Meta, join_group, receive_weights, weight_sync

__all__ = [
    "BaseWeights",
    "Generation",
    "LoraWeights",
    "RolloutEngine",
    "WeightStore",
    "colocated_share",
    "engine_options",
    "engine_threads",
    "merged_adapter",
    "start_engines",
    "use_threads",
]

STORE_POLL_S = 0.05
"""How often an engine asks the store whether the version it needs has been published."""

VERSION_WAIT_S = 600.0
"""How long an engine waits for a version to be published before it gives up."""


@dataclass
class Generation:
    """The answers to a list of prompts, ``group`` per prompt, in prompt order."""

    completions: list[list[int]]
    """Token ids of each answer (prompt p's answers at p * group ... p * group + group - 1)."""
    logprobs: list[list[float]]
    """The engine's log-probability of each sampled token (at temperature 1, before sampling settings)."""
    truncated: list[bool]
    """Whether the answer stopped at ``max_new_tokens`` instead of an end token."""
    generate_s: float
    sync_s: float
    """Time this call spent loading newer weights (0 when the engine was current)."""


class WeightStore:
    """The newest published policy weights of a run (an object-store reference), their version, and how often
    the training workers (re)started: workers resumed from a checkpoint publish an older version, which
    every engine must load again."""

    def __init__(self) -> None:
        self.version, self.starts = -1, 0
        self.refs: list[Any] = []

    def publish(self, version: int, refs: list[Any], first: bool = False) -> None:
        """``refs``: one object reference, nested in a list so that Ray passes it unresolved; ``first``: the
        workers' first publish since they started (taken even when older)."""
        if first:
            self.starts += 1
        if first or version >= self.version:
            self.version, self.refs = version, refs

    def latest(self) -> tuple[int, int, list[Any]]:
        """(starts, version, refs)."""
        return self.starts, self.version, self.refs


class RolloutEngine:
    """One vLLM engine on the run's base model."""

    def __init__(self, job: dict[str, Any], store: Any) -> None:
        cfg = JobConfig.model_validate(job)
        # Set before vLLM reads them, over what the job's runtime_env gives: rollout.kv_cache_gib is this engine's.
        os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE=f"{cfg.rollout.kv_cache_gib:g}")
        self.cfg, self.store = cfg, store
        use_threads(engine_threads(cfg))
        self.adapter = cfg.adapter.type == "lora"
        max_len = cfg.data.cutoff_len + cfg.method.max_new_tokens
        engine = start_vllm(
            cfg.model, None, max_model_len=max_len, kv_cache_gib=cfg.rollout.kv_cache_gib,
            engine_kwargs={"logprobs_mode": "processed_logprobs", **cfg.rollout.engine_kwargs},
        )  # fmt: skip
        self.llm = engine.llm
        # An adapter reloads only the blocks it changed, and whole weights hold none for the rotary embedding's
        # cache: vLLM warns at every reload about each layer left as it was.
        logging.getLogger("vllm.model_executor.model_loader.reload").setLevel(logging.ERROR)
        self.version, self.starts = -1, 0
        self.broadcast = weight_sync(cfg) == "broadcast"
        self.address: GroupAddress | None = None
        self.group: Any = None
        self.base: BaseWeights | None = None
        if self.adapter:
            merged = [LoraWeights.from_folder(adapter_folder(entry, cfg.model.cache_dir)) for entry in
                      merged_adapters(cfg.adapter)]  # fmt: skip
            self.base = BaseWeights(resolve_model(cfg.model), merged)
            if changed := self.base.changed():  # adapter.init_from's merged adapters belong to the base it uses
                blocks = self.base.whole_blocks({name: self.base[name] for name in changed})
                self._reload(blocks, [name for name, _ in blocks])

    def ready(self) -> int:
        """The engine's process id, once vLLM is up."""
        return os.getpid()

    def generate(self, prompts: list[list[int]], version: int, group: int, greedy: bool = False) -> Generation:
        """``group`` sampled answers per prompt from policy ``version`` (waiting for it to be published);
        ``greedy``: the most likely answer instead (temperature 0).

        Sampling draws from the engine's own generator (seeded once at start): vLLM's per-request seeds
        fail on CPU when a long batch of prompts is prefilled in chunks."""
        from vllm import SamplingParams, TokensPrompt

        sync_s = self._catch_up(version)
        m = self.cfg.method
        params = SamplingParams(
            n=group, temperature=0.0 if greedy else m.temperature, top_p=self.cfg.rollout.top_p,
            max_tokens=m.max_new_tokens,
            logprobs=0,
        )  # fmt: skip
        start = time.perf_counter()
        requests = [TokensPrompt(prompt_token_ids=list(map(int, ids))) for ids in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        completions, logprobs, truncated = [], [], []
        for output in outputs:
            for answer in output.outputs:
                ids = list(answer.token_ids)
                completions.append(ids)
                logprobs.append([float(step[token].logprob) for step, token in zip(answer.logprobs, ids, strict=True)])
                truncated.append(answer.finish_reason == "length")
        return Generation(completions, logprobs, truncated, time.perf_counter() - start, sync_s)

    def loaded_version(self) -> int:
        return self.version

    def receive(self, version: int, address: GroupAddress, rank: int, meta: Meta, joining: bool) -> None:
        """Load policy ``version``'s whole weights as rank 0 of the group at ``address`` broadcasts them, bucket by
        bucket, this engine being member ``rank`` (``rollout.weight_sync: broadcast``); ``joining``: the group is
        new (formed by workers that just started)."""
        if joining:
            self.group, self.address = join_group(address, rank), address
        elif address != self.address:  # restarted since the group formed: only the workers' resume takes it in
            raise EngineBehind(f"rollout engine {os.getpid()} was restarted after its weight group formed")
        device = "cuda" if address.backend == "nccl" else "cpu"
        self._reload(receive_weights(self.group, meta, device), [name for name, _, _ in meta])
        self.version = version

    def _catch_up(self, version: int) -> float:
        """Load the weights ``version`` needs from the store, unless this engine holds them; returns the seconds
        it took. Workers resumed from a checkpoint (a new start in the store) make every engine load again."""
        import ray

        if self.broadcast:
            if self.version >= version:
                return 0.0
            raise EngineBehind(
                f"rollout engine {os.getpid()} holds policy version {self.version} and was asked for {version}: it "
                "was restarted, and under rollout.weight_sync broadcast only the workers can send it the weights; "
                "they resume from their newest checkpoint if scaling.max_failures allows"
            )
        start = time.perf_counter()
        starts, published, refs = ray.get(self.store.latest.remote())
        if starts == self.starts and self.version >= version:
            return 0.0
        while published < version:
            if time.perf_counter() - start > VERSION_WAIT_S:
                raise TimeoutError(f"policy version {version} was not published within {VERSION_WAIT_S:g} s")
            time.sleep(STORE_POLL_S)
            starts, published, refs = ray.get(self.store.latest.remote())
        self._load(published, ray.get(refs[0]))
        self.starts = starts
        return time.perf_counter() - start

    def _load(self, version: int, files: dict[str, bytes]) -> None:
        weights = merged_adapter(files, self.base) if self.base is not None else _model_weights(files)
        self._reload(weights, [name for name, _ in weights])
        self.version = version

    def _reload(self, weights: Iterable[tuple[str, Any]], names: Iterable[str]) -> None:
        """Load ``weights`` (named ``names``; an iterator is consumed once, as it arrives) into the model."""
        # vLLM's in-place reload: on CPU the loaded linear weights were repacked for its GEMM kernels (and the
        # plain tensors dropped), so new weights go through the loader and are repacked again.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if any(name.endswith("embed_tokens.weight") for name in names):
            self.llm.apply_model(_retie_lm_head)
        self.llm.reset_prefix_cache()


def _retie_lm_head(model: Any) -> None:
    """A tied LM head after its embedding was reloaded: the reload placed a new embedding tensor, and on CPU the
    head multiplies by a packed copy of the old one; point it at the new tensor and pack that."""
    head, embed = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    config = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    if head is None or embed is None or not config:
        return
    head.weight = embed.weight
    head.quant_method.process_weights_after_loading(head)


class BaseWeights:
    """The base model's weights as its safetensors hold them, with ``merged`` LoRA adapters (``adapter.init_from``
    but the continued one) merged in, in order; read on first use and kept (the merge of every published
    adapter starts from them)."""

    def __init__(self, folder: Path, merged: Sequence[LoraWeights] = ()) -> None:
        from safetensors import safe_open

        self.files: dict[str, Path] = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                self.files.update(dict.fromkeys(f.keys(), path))
        self.merged = list(merged)
        self.kept: dict[str, Any] = {}

    def changed(self) -> list[str]:
        """The weights the ``merged`` adapters change, which an engine started on the plain base must load."""
        return sorted({f"{module}.weight" for adapter in self.merged for module in adapter.modules()})

    def whole_blocks(self, weights: dict[str, Any]) -> list[tuple[str, Any]]:
        """``weights`` and this base's weights of every other module in the same parent (an attention or MLP
        block), which vLLM fuses with them (q/k/v, gate/up) and must reload whole."""
        blocks = tuple({name.rsplit(".", 2)[0] + "." for name in weights})
        siblings = sorted(name for name in self.files if name.startswith(blocks) and name not in weights)
        return [*weights.items(), *((name, self[name]) for name in siblings)]

    def __getitem__(self, name: str) -> Any:
        from safetensors import safe_open

        if name not in self.kept:
            if name not in self.files:
                raise KeyError(f"the base model has no weight {name!r} for the adapter to merge into")
            with safe_open(str(self.files[name]), framework="pt") as f:
                weight = f.get_tensor(name).float()
            for adapter in self.merged:
                weight = adapter.merged(name.removesuffix(".weight"), weight)
            self.kept[name] = weight
        return self.kept[name]


_MERGEABLE = (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector")
"""The adapter tensors an engine merges; any other (``modules_to_save``, LoRA on embeddings) is refused."""


def _check_mergeable(names: Iterable[str]) -> None:
    unknown = [key for key in names if not key.endswith(_MERGEABLE)]
    if unknown:
        raise ValueError(f"rollout engines merge LoRA and DoRA weights only, not {unknown[0]!r}")


@dataclass(frozen=True)
class LoraWeights:
    """A peft LoRA (or DoRA) adapter: its ``adapter_config.json`` and its tensors by their saved names."""

    config: dict[str, Any]
    tensors: dict[str, Any]

    def __post_init__(self) -> None:
        _check_mergeable(self.tensors)

    @staticmethod
    def check_folder(folder: Path) -> None:
        """Refuse an adapter folder whose weights the engines cannot merge, reading only their names where
        the folder has ``adapter_model.safetensors``."""
        if not (folder / "adapter_model.safetensors").is_file():
            LoraWeights.from_folder(folder)
            return
        from safetensors import safe_open

        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as weights:
            _check_mergeable(weights.keys())

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> LoraWeights:
        """From a published adapter's file contents (``adapter_config.json``, ``adapter_model.safetensors``)."""
        from safetensors.torch import load

        return cls(json.loads(files["adapter_config.json"]), load(files["adapter_model.safetensors"]))

    @classmethod
    def from_folder(cls, folder: Path) -> LoraWeights:
        """From an adapter folder (``adapter_model.safetensors``, or an older peft's ``adapter_model.bin``)."""
        import torch
        from safetensors.torch import load_file

        config = json.loads((folder / "adapter_config.json").read_text())
        if (folder / "adapter_model.safetensors").is_file():
            return cls(config, load_file(str(folder / "adapter_model.safetensors")))
        return cls(config, torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True))

    def modules(self) -> list[str]:
        """The base model's modules the adapter changes, by their names in the base model."""
        return [key.split(".lora_A.")[0].removeprefix("base_model.model.") for key in self.tensors if ".lora_A." in key]

    def scale(self, module: str) -> float:
        """s = alpha / r (rsLoRA: alpha / sqrt(r)), with ``rank_pattern`` / ``alpha_pattern`` matched as peft does."""
        from peft.utils.other import get_pattern_key

        ranks, alphas = self.config.get("rank_pattern") or {}, self.config.get("alpha_pattern") or {}
        rank = ranks.get(get_pattern_key(list(ranks), module), self.config["r"])
        alpha = alphas.get(get_pattern_key(list(alphas), module), self.config["lora_alpha"])
        return float(alpha / (math.sqrt(rank) if self.config.get("use_rslora") else rank))

    def merged(self, module: str, weight: Any) -> Any:
        """``module``'s merged weight W' = W + s B A (Hu et al. 2021, eq. 3); under DoRA (Liu et al. 2024, eq. 5)
        W' = m (W + s B A) / ||W + s B A||, the norm of each output row, ``m`` the learned magnitudes. ``weight``
        itself where the adapter leaves the module alone."""
        prefix = f"base_model.model.{module}"
        if f"{prefix}.lora_A.weight" not in self.tensors:
            return weight
        a, b = self.tensors[f"{prefix}.lora_A.weight"].float(), self.tensors[f"{prefix}.lora_B.weight"].float()
        updated = weight + self.scale(module) * (b @ a)
        magnitude = self.tensors.get(f"{prefix}.lora_magnitude_vector")
        if magnitude is None:
            return updated
        return (magnitude.float() / updated.norm(dim=1)).unsqueeze(1) * updated


def merged_adapter(files: dict[str, bytes], base: BaseWeights) -> list[tuple[str, Any]]:
    """(weight name, merged weight) for every module of a published peft LoRA or DoRA adapter (``LoraWeights``),
    plus the base weights of every other module in the same parent (an attention or MLP block), which vLLM
    fuses with them (q/k/v, gate/up) and must reload whole. Names are the base model's safetensors names, what
    vLLM's ``load_weights`` reads."""
    adapter = LoraWeights.from_files(files)
    return base.whole_blocks(
        {f"{module}.weight": adapter.merged(module, base[f"{module}.weight"]) for module in adapter.modules()}
    )


def _model_weights(files: dict[str, bytes]) -> list[tuple[str, Any]]:
    from safetensors.torch import load

    return [
        item for name, data in sorted(files.items()) if name.endswith(".safetensors") for item in load(data).items()
    ]


def colocated_share(cfg: JobConfig, cores: float) -> float:
    """The cores of a node that colocated engines and training each use while they run: all of them when they
    take turns, half under ``rollout.async: one_step``, where the engines generate while the workers train (on
    2 cores, both taking all of them made each step 1.5-2x slower than taking turns)."""
    return cores / 2 if cfg.rollout.async_ == "one_step" else cores


def engine_threads(cfg: JobConfig) -> int:
    """Compute threads of an engine (or reward model) on the node it runs on: its colocated share of the node's
    cores, else its reserved CPUs. Ray would give an actor that reserves no CPU a single thread."""
    if cfg.rollout.placement == "colocated":
        return max(1, math.floor(colocated_share(cfg, len(os.sched_getaffinity(0)))))
    return max(1, math.floor(cfg.rollout.cpus_per_engine))


def use_threads(count: int) -> None:
    """This process's compute threads (torch's and OpenMP's)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(count)
    torch.set_num_threads(count)


def engine_options(cfg: JobConfig) -> dict[str, Any]:
    """Ray actor options of one engine: its resources by ``rollout.placement`` and its restarts."""
    r = cfg.rollout
    resources: dict[str, Any] = {"num_cpus": 0}
    if r.placement == "separate":
        resources = {"num_cpus": r.cpus_per_engine, "num_gpus": r.gpus_per_engine if cfg.scaling.use_gpu else 0}
        if r.resources:
            resources["resources"] = dict(r.resources)
    return {**resources, "max_restarts": r.max_restarts, "max_task_retries": r.max_restarts}


def engine_name(cfg: JobConfig, index: int) -> str:
    """The Ray actor name of a run's engine (``ray list actors`` shows it; ``ray.get_actor`` finds it)."""
    return f"rollout-{cfg.train.run_name}-{index}"


def start_engines(cfg: JobConfig, store: Any) -> list[Any]:
    """``rollout.num_engines`` started engines (waits until each has loaded its model)."""
    import ray

    actor = ray.remote(RolloutEngine)
    job = cfg.model_dump(mode="json")
    options = engine_options(cfg)
    engines = [
        actor.options(name=engine_name(cfg, i), **options).remote(job, store)  # type: ignore[attr-defined]
        for i in range(cfg.rollout.num_engines)
    ]  # type: ignore[attr-defined]
    ray.get([engine.ready.remote() for engine in engines])  # type: ignore[attr-defined]
    return engines
