"""Driver side of training: connect to Ray, plan the run, build the data stream, launch TorchTrainer.

The same function runs on a laptop (a fresh local Ray) and under ``ray job submit`` (the
cluster in ``RAY_ADDRESS``). Resuming is Ray Train's own: a run started again with the same
``storage_path`` and ``run_name`` gets its latest checkpoint back in every worker.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raytune_ft.config import ConfigError, JobConfig, load_config
from raytune_ft.data import DATA_TASK_CPUS, PreparedData, build_datasets, no_trainable_rows
from raytune_ft.data.cache import data_fingerprint, load_or_write
from raytune_ft.models import CONFIG_FILE, CheckpointError, latest_checkpoint, load_row_tokenizer, pin_sources
from raytune_ft.models.vision import image_encoder_loader

from .loop import RunPlan, train_loop_per_worker
from .reference import with_reference_logps
from .tokenizer import job_tokenizer

__all__ = [
    "OFFLINE",
    "JobData",
    "TrainOutcome",
    "WorkerSetup",
    "absolute_storage",
    "build_trainer",
    "check_data_cpus",
    "check_resume_compatible",
    "compute_cpus",
    "plan_total_steps",
    "prepare_data",
    "prepare_job_data",
    "resumed_config",
    "run_training",
    "start_ray",
    "streams_rows",
    "worker_cpus",
]

# Sections that define what the saved weights are; resuming under different values would mix them.
_RESUME_SECTIONS = ("model", "adapter", "method")
# Keys of those sections that change how training runs, not what the weights are.
_RESUME_FREE = {
    "model.compile", "model.gradient_checkpointing", "model.trust_remote_code", "model.cache_dir",
    "method.judge",  # where the judge is reached; a moved endpoint does not change what was learned
}  # fmt: skip

# HF_HUB_OFFLINE is not set here: a worker on a node whose cache lacks the pinned Hub snapshot downloads it,
# unless the node's own environment (or the local driver's, which local workers inherit) says offline.
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray Train V2 tees worker prints into its logger as well, so every progress line showed twice,
    # and its worker logger echoes an INFO line per report; the run prints its own progress.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


@dataclass(frozen=True)
class TrainOutcome:
    run_dir: str
    """``storage_path/run_name``: every checkpoint of the run and ``metrics.jsonl``."""
    checkpoint: str | None
    """The newest checkpoint after training."""
    total_steps: int


def start_ray(address: str | None = None, num_cpus: int | None = None, init: Mapping[str, Any] | None = None) -> None:
    """Join ``address`` / ``RAY_ADDRESS`` when given, else start a private local Ray instance.

    The local instance keeps its dashboard (on 127.0.0.1): Ray Train's placement-group cleaner
    queries the State API it serves, and people like watching the run there. ``init`` holds more
    ``ray.init`` arguments (``scaling.ray_init``); its ``runtime_env`` env vars win over ours, and its
    ``address`` is used when neither ``address`` nor ``RAY_ADDRESS`` names one.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(init or {})
    target = address or kwargs.pop("address", None) or os.environ.get("RAY_ADDRESS")
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    if target:
        # Under `ray job submit` the job's runtime_env already sets some of these (cluster/runtime_env.yaml
        # does), its env vars are in ours, and Ray refuses a ray.init that names the same key twice.
        ours = {key: value for key, value in WORKER_ENV.items() if key not in os.environ}
        runtime_env["env_vars"] = {**ours, **runtime_env.get("env_vars", {})}
        ray.init(address=target, runtime_env=runtime_env, **kwargs)
    else:
        runtime_env["env_vars"] = {**WORKER_ENV, **runtime_env.get("env_vars", {})}
        kwargs = {"num_cpus": num_cpus, "include_dashboard": True, "dashboard_host": "127.0.0.1", **kwargs}
        ray.init(address="local", runtime_env=runtime_env, **kwargs)


def worker_cpus(cfg: JobConfig, cluster_cpus: float) -> float:
    """CPUs per training worker: the configured value, else 1 while one CPU stays free for Ray Data.

    On a small machine (2 CPUs, 2 workers) a full CPU per worker leaves the tokenizer actors
    nothing, and the data stream starves the trainer (seen here: no rows after 9.5 minutes).
    """
    if cfg.scaling.cpus_per_worker is not None:
        return cfg.scaling.cpus_per_worker
    spare = cluster_cpus - cfg.scaling.num_workers
    if spare >= 1:
        return 1.0
    return max(0.1, (cluster_cpus - 1) / cfg.scaling.num_workers)


def compute_cpus(cfg: JobConfig, cpus: float, free_cpus: float, *, one_node: bool) -> float:
    """CPUs a CPU training worker computes on: the ``cpus`` it reserves, or on one node without
    ``scaling.cpus_per_worker``, its even share of the node's ``free_cpus`` (those no other job holds, at
    most the cores this process may use). The reservation leaves Ray Data a CPU to schedule its tokenizer
    tasks on, but they need it only for moments between steps; a lone worker on a laptop would otherwise
    train on one core of many. On a cluster, where workers of other runs may share a node, each keeps to
    what it reserves."""
    if cfg.scaling.cpus_per_worker is not None or cfg.scaling.use_gpu or not one_node:
        return cpus
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(cpus, min(free_cpus, cores) / cfg.scaling.num_workers)


def streams_rows(cfg: JobConfig, share: bool = False) -> bool:
    """Whether Ray Data streams the training rows to the workers while they train (and so needs CPUs then):
    with ``train.max_steps`` and not shared by a sweep they are tokenized on the way; from
    ``data.tokenized_path`` they are read on the way; otherwise they are materialized before training."""
    return bool(cfg.data.tokenized_path) or (cfg.train.max_steps is not None and not share)


def check_data_cpus(cfg: JobConfig, cluster_cpus: float, reserved: float, cpus: float, *, one_node: bool) -> None:
    """Refuse a run whose training workers (``cpus`` each) and actors (``reserved`` CPUs) leave Ray Data less
    than one task's CPUs while it streams the rows (``streams_rows``): the stream would never start and the
    trainer would wait forever. A cluster of more than one node may be autoscaling, so there it is a warning."""
    left = cluster_cpus - reserved - cpus * cfg.scaling.num_workers
    if left >= DATA_TASK_CPUS or cluster_cpus <= 0 or not streams_rows(cfg):
        return
    taken = f"{cfg.scaling.num_workers} training worker(s) x {cpus:g} CPU"
    fixes = ["scaling.cpus_per_worker" if cfg.scaling.cpus_per_worker is not None else "scaling.num_workers"]
    if reserved:
        taken += f" and {reserved:g} CPU for the rollout engines and reward models (rollout.placement: separate)"
        fixes.insert(0, f"rollout.cpus_per_engine (now {cfg.rollout.cpus_per_engine:g}; 0.5 fits a 2-CPU machine)")
    message = (
        f"{taken} leave {max(left, 0.0):g} of the cluster's {cluster_cpus:g} CPUs to Ray Data, whose tasks take "
        f"{DATA_TASK_CPUS:g} each, so no row would reach the workers; lower {' or '.join(fixes)}, or add CPUs"
    )
    if one_node:
        raise ConfigError(message)
    print(f"raytune_ft: warning: {message} (unless the cluster adds nodes)", flush=True)


def plan_total_steps(cfg: JobConfig, rows: int) -> int:
    """Optimizer steps for ``num_epochs`` over ``rows`` rows split evenly across workers; for an online stage,
    ``method.ppo_epochs`` x ``method.ppo_buffer_size`` steps per ``rollout.prompts_per_step`` prompts."""
    if cfg.method.online:
        batches = rows // cfg.rollout.prompts_per_step
        if batches == 0:
            raise no_trainable_rows(cfg.data, cfg.method.rows, f"{rows} prompts, fewer than rollout.prompts_per_step")
        return max(1, int(cfg.train.num_epochs * batches)) * cfg.method.ppo_epochs * cfg.method.ppo_buffer_size
    per_worker = rows // cfg.scaling.num_workers
    if per_worker == 0:
        raise ConfigError(
            f"the datasets give {rows} training rows, too few for scaling.num_workers={cfg.scaling.num_workers}; "
            "add data, raise data.max_samples, or use fewer workers"
        )
    micro_per_epoch = math.ceil(per_worker / cfg.train.per_device_batch_size)
    return max(1, math.ceil(cfg.train.num_epochs * micro_per_epoch / cfg.train.gradient_accumulation_steps))


@contextmanager
def _no_actors(cfg: JobConfig) -> Iterator[dict[str, Any]]:
    yield {}


def _shared_threads(cfg: JobConfig, cpus: float, share: float) -> int:
    return math.ceil(share)


def _nothing_to_check(cfg: JobConfig) -> None:
    return None


def _no_cpus(cfg: JobConfig) -> float:
    return 0.0


@dataclass(frozen=True)
class WorkerSetup:
    """What a run's training workers run, and what the driver starts beside them for the run's length: the
    offline stages' loop and nothing (``OFFLINE``), or an online stage's loop and its rollout actors
    (``raytune_ft.rl.launch.ONLINE``)."""

    loop: Callable[[dict[str, Any]], None] = train_loop_per_worker
    actors: Callable[[JobConfig], AbstractContextManager[dict[str, Any]]] = _no_actors
    """Starts the actors and gives the ``feed`` the workers get (``WorkerContext.extra``); stops them on exit."""
    threads: Callable[[JobConfig, float, float], int] = _shared_threads
    """Compute threads of a worker holding ``cpus`` CPUs whose share of its node's free CPUs is ``share``
    (``compute_cpus``)."""
    check: Callable[[JobConfig], None] = _nothing_to_check
    """Refuses, before anything starts, what the workers would only find wrong later (an online stage's rewards)."""
    reserved_cpus: Callable[[JobConfig], float] = _no_cpus
    """CPUs the ``actors`` reserve, which the training workers and Ray Data do without."""


OFFLINE = WorkerSetup()


def run_training(cfg: JobConfig, address: str | None = None, setup: WorkerSetup = OFFLINE) -> TrainOutcome:
    """Train ``cfg`` on Ray and return where the run and its newest checkpoint are."""
    import ray

    setup.check(cfg)
    storage = absolute_storage(cfg.train.storage_path)
    run_dir = f"{storage.rstrip('/')}/{cfg.train.run_name}"
    # One Hub commit and fixed init_from folders for every worker, restart and checkpoint; a restarted run keeps
    # the revision its checkpoints hold where the config names a branch, which may have moved since.
    cfg = pin_sources(cfg, resumed=resumed_config(run_dir))
    check_resume_compatible(cfg, run_dir)
    start_ray(address, init=cfg.scaling.ray_init)
    # Convert a builtin model once, before workers race for it, and fail here on a missing template.
    tokenizer = job_tokenizer(cfg)
    cluster_cpus, reserved = float(ray.cluster_resources().get("CPU", 1)), setup.reserved_cpus(cfg)
    free_cpus = min(cluster_cpus, float(ray.available_resources().get("CPU", 0))) - reserved
    cpus = worker_cpus(cfg, cluster_cpus - reserved)
    one_node = len([n for n in ray.nodes() if n["Alive"]]) == 1
    check_data_cpus(cfg, cluster_cpus, reserved, cpus, one_node=one_node)
    job_data = prepare_job_data(cfg, tokenizer, cpus * cfg.scaling.num_workers + reserved, share=False)
    total_steps = job_data.total_steps(cfg)
    has_eval = "eval" in job_data.datasets
    threads = setup.threads(cfg, cpus, compute_cpus(cfg, cpus, free_cpus, one_node=one_node))
    plan = RunPlan(total_steps=total_steps, run_dir=run_dir, has_eval=has_eval, threads=threads)
    with setup.actors(cfg) as feed:
        trainer = build_trainer(cfg, plan, job_data.datasets, cpus, storage, cfg.train.run_name, loop=setup.loop,
                                feed=feed)  # fmt: skip
        result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint else None
    return TrainOutcome(run_dir=plan.run_dir, checkpoint=checkpoint, total_steps=total_steps)


@dataclass
class JobData:
    """The tokenized datasets of a job, ready for ``build_trainer``."""

    datasets: dict[str, Any]
    """``train`` and, with a validation split, ``eval`` (materialized: every worker reads it whole)."""
    rows: int | None
    """Training rows, counted when ``train.max_steps`` is not set (epochs need it)."""

    def total_steps(self, cfg: JobConfig) -> int:
        """Optimizer steps of a run of ``cfg`` over these rows."""
        if cfg.train.max_steps is not None:
            return cfg.train.max_steps
        assert self.rows is not None, "rows are counted whenever train.max_steps is unset"
        return plan_total_steps(cfg, self.rows)


def prepare_job_data(cfg: JobConfig, tokenizer: Any, training_cpus: float, *, share: bool) -> JobData:
    """Tokenize (and, for ``method.reference: precomputed``, score) the job's rows on Ray Data.

    ``training_cpus`` are the CPUs the training workers will hold; the tokenizer actors get the rest.
    ``share``: several runs read the rows (a sweep), so the training rows are materialized in the
    object store once instead of streamed into one run.
    """
    import ray

    spare = max(1, int(float(ray.cluster_resources().get("CPU", 1)) - training_cpus))
    prepared = prepare_data(cfg, tokenizer, concurrency=cfg.data.tokenize_concurrency or spare)
    if cfg.method.needs_reference and cfg.method.reference == "precomputed":
        print("raytune_ft: scoring the rows with the reference model (method.reference: precomputed) ...", flush=True)
        prepared = PreparedData(
            train=with_reference_logps(prepared.train, cfg, tokenizer.pad_token_id),
            eval=with_reference_logps(prepared.eval, cfg, tokenizer.pad_token_id)
            if prepared.eval is not None
            else None,
        )
    train, rows = prepared.train, None
    if cfg.train.max_steps is None or share:  # epochs need a row count: tokenize once, then count
        train = train if streams_rows(cfg, share) else train.materialize()
        counted = train.count()  # cheap here: the rows are materialized or cached
        if counted == 0:
            raise no_trainable_rows(cfg.data, cfg.method.rows)
        rows = counted if cfg.train.max_steps is None else None
    datasets = {"train": train}
    if prepared.eval is not None:
        datasets["eval"] = prepared.eval.materialize()
        print(f"raytune_ft: {datasets['eval'].count()} validation rows held out", flush=True)
    return JobData(datasets=datasets, rows=rows)


def build_trainer(
    cfg: JobConfig,
    plan: RunPlan,
    datasets: dict[str, Any],
    cpus: float,
    storage: str,
    name: str,
    callbacks: list[Any] | None = None,
    loop: Callable[[dict[str, Any]], None] = train_loop_per_worker,
    feed: dict[str, Any] | None = None,
) -> Any:
    """The TorchTrainer of one run: ``cfg.scaling`` workers with ``cpus`` each running ``loop``, checkpoints
    in ``storage/name``; ``callbacks`` are Ray Train ``UserCallback``s, ``feed`` what the loop's feed needs
    from the driver (``WorkerContext.extra``)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        loop,
        torch_config=TorchConfig(timeout_s=cfg.scaling.collective_timeout_s),
        train_loop_config={"job": cfg.model_dump(mode="json"), "plan": asdict(plan), "feed": feed or {}},
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cpus},
            placement_strategy=cfg.scaling.placement_strategy,
        ),
        run_config=RunConfig(  # type: ignore[call-arg]  # mypy sees Train V1's RunConfig; V2 is live
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.save_total_limit),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or [],
        ),
        datasets=datasets,
        dataset_config=_data_config(cfg),
    )


def _data_config(cfg: JobConfig) -> Any:
    """Split ``train`` across workers, in a fixed order when ``data.preserve_order`` (exact resume).

    The validation set is small and an equal split would drop rows to even the shards out; every
    worker reads it whole and evaluates every world_size-th batch instead.
    """
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = cfg.data.preserve_order  # also turns off locality routing in the split
    return DataConfig(datasets_to_split=["train"], execution_options={"train": options})


def check_resume_compatible(cfg: JobConfig, run_dir: str) -> None:
    """Refuse to resume a run whose checkpoints hold another model, adapter or objective, or were
    written by another strategy."""
    saved = resumed_config(run_dir)
    if saved is None:
        return  # a new run
    changed = [
        f"{section}.{key}: {old!r} -> {new!r}"
        for section in _RESUME_SECTIONS
        for (key, old), new in zip(
            getattr(saved, section).model_dump().items(), getattr(cfg, section).model_dump().values(), strict=True
        )
        if new != old and f"{section}.{key}" not in _RESUME_FREE
    ]
    if saved.data.template != cfg.data.template:  # the prompt format the weights have learned
        changed.append(f"data.template: {saved.data.template!r} -> {cfg.data.template!r}")
    if saved.scaling.strategy != cfg.scaling.strategy:  # each strategy reads only its own resume state
        changed.append(f"scaling.strategy: {saved.scaling.strategy!r} -> {cfg.scaling.strategy!r}")
    if changed:
        raise ConfigError(
            f"run {cfg.train.run_name!r} already has checkpoints in {run_dir} trained with other settings "
            f"({'; '.join(changed)}). Resuming would mix them: choose a new train.run_name, or restore "
            "those settings to continue the run."
        )


def resumed_config(run_dir: str) -> JobConfig | None:
    """The config of the newest checkpoint a restarted run resumes from; None for a new run (or remote storage)."""
    if "://" in run_dir:
        return None
    try:
        checkpoint = latest_checkpoint(run_dir)
    except CheckpointError:
        return None
    return load_config(checkpoint / CONFIG_FILE)


def prepare_data(cfg: JobConfig, tokenizer: Any, concurrency: int) -> PreparedData:
    """The tokenized train (+ validation) streams, read from ``data.tokenized_path`` when it holds them.

    ``tokenizer`` is the run's (``job_tokenizer``), used on the driver only to fingerprint the cache.
    """
    load = functools.partial(load_row_tokenizer, cfg.model)  # light: the first rows come sooner
    build = functools.partial(
        build_datasets, cfg.data, load, seed=cfg.train.seed, concurrency=concurrency, stage=cfg.method.rows,
        load_media=image_encoder_loader(cfg),
    )  # fmt: skip
    if cfg.data.tokenized_path is None:
        return build()
    fingerprint = data_fingerprint(cfg.data, tokenizer, cfg.model.source, cfg.train.seed, cfg.method.rows)
    shuffle_seed = cfg.train.seed if cfg.data.shuffle else None
    prepared, reused = load_or_write(cfg.data.tokenized_path, fingerprint, build, shuffle_seed)
    verb = "reusing" if reused else "wrote"
    print(f"raytune_ft: {verb} tokenized data in {cfg.data.tokenized_path}", flush=True)
    return prepared


def absolute_storage(storage_path: str) -> str:
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())
