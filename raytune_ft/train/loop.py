"""What each Ray Train worker runs: build -> restore -> step until done -> report + checkpoint.

Reads top to bottom in pipeline order. Everything before the loop (``build_training``) and the
step itself (``StepCore``) run without Ray too; only data iteration and reporting touch Ray here.
Where each step's micro-batches come from is a ``Feed``: the dataset shard for the offline stages
(``data_feed``), rollout engines for the online ones (``raytune_ft.rl``), which run the same loop.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from raytune_ft.config import JobConfig
from raytune_ft.data import (
    SCORED_SEQUENCES,
    balanced_groups,
    no_trainable_rows,
    pack_batch,
    pad_batch,
    pad_scored,
    token_runs,
)
from raytune_ft.models import (
    ModelSourceError,
    apply_adapter,
    attach_head,
    is_adapter_checkpoint,
    keeps_attention_in_sample,
    load_causal_lm,
    quantized_base,
    resolve_model,
    trainable_parameters,
)
from raytune_ft.models.vision import is_vision_language_model, with_image_arrays

from .checkpoint import TrainState, load_weights_into, restore_state, save_checkpoint
from .objectives import OBJECTIVES, MetricSums
from .precision import build_precision, cast_trainable, compute_precision
from .progress import Meter, reduce_metrics
from .reference import build_reference
from .step import StepCore, build_optimizer, build_scheduler, move_batch
from .strategies import STRATEGIES, is_distributed
from .tokenizer import job_tokenizer
from .tracking import Trackers, open_trackers, plot_loss

__all__ = ["Evaluation", "Feed", "RunPlan", "WorkerContext", "build_training", "collator", "data_feed",
           "forward_budget", "forward_passes", "run_worker", "train_loop_per_worker"]  # fmt: skip

Collate = Callable[[dict[str, Any]], dict[str, torch.Tensor]]
"""A numpy batch of token rows -> model-ready tensors."""
T = TypeVar("T")


@dataclass(frozen=True)
class RunPlan:
    """What the driver decided before launch and every worker must agree on."""

    total_steps: int
    run_dir: str
    """Absolute ``storage_path/run_name`` (local path or URI)."""
    has_eval: bool = False
    """Whether an ``eval`` dataset shard exists (the feed's ``Evaluation`` then reports on it)."""
    threads: int = 0
    """Intra-op threads per worker on CPU (0 leaves torch's choice), as the run's ``WorkerSetup.threads`` decides:
    for a plain run its share of the node's free CPUs (``compute_cpus``), rounded up; for a Tune trial the CPUs
    it reserves. Ray starts a worker with 1.5 CPUs with one OpenMP thread; it may use 2."""
    start_from: str | None = None
    """A checkpoint (of another run) to start from while this run has none of its own: a PBT trial
    continuing another trial's state. Ray Train V2 dropped ``resume_from_checkpoint`` for this."""
    report_logs: bool = False
    """Report every logged step's metrics to Ray Train, not only evaluations and checkpoints: a Tune trial
    needs them (its scheduler may rank trials by the training loss). Each report is a round trip through
    Ray Train's synchronization actor, a tenth of a small model's step on a CPU, so a plain run, which
    prints and writes its metrics itself, skips them."""


def build_training(
    cfg: JobConfig, total_steps: int, device: torch.device, checkpoint: Path | None = None
) -> tuple[StepCore, Any]:
    """Model (resumed from ``checkpoint`` when given), strategy, optimizer and schedule."""
    model_dir = resolve_model(cfg.model)
    tokenizer = job_tokenizer(cfg)
    full_resume = checkpoint is not None and not is_adapter_checkpoint(checkpoint)
    if (method := quantized_base(model_dir)) and cfg.adapter.type != "lora":
        raise ModelSourceError(
            f"{cfg.model.source}: the base is quantized ({method}); its weights cannot be trained, so use "
            f"adapter.type lora (not {cfg.adapter.type}), or start from the full-precision model"
        )
    model = load_causal_lm(cfg.model, checkpoint if full_resume and checkpoint else model_dir, device.type)
    model = apply_adapter(model, cfg.adapter, cfg.model.cache_dir)
    if checkpoint is not None and not full_resume:
        load_weights_into(model, checkpoint)
    model = attach_head(model, cfg.method.stage, checkpoint)
    cast_trainable(model, compute_precision(cfg))
    strategy = STRATEGIES[cfg.scaling.strategy](device, cfg)
    model, optimizer = strategy.prepare(model, functools.partial(build_optimizer, cfg=cfg.train))
    reference = build_reference(cfg, strategy.unwrap(model), device)
    core = StepCore(
        model=model,
        objective=OBJECTIVES[cfg.method.stage](cfg.method, reference),
        strategy=strategy,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.train, total_steps),
        max_grad_norm=cfg.train.max_grad_norm,
        precision=build_precision(cfg, device, sharded=cfg.scaling.strategy == "fsdp2" and is_distributed()),
        reference=reference,
    )
    return core, tokenizer


class Evaluation(Protocol):
    """How a run measures itself on its validation split, every ``every`` steps."""

    every: int
    headline: str
    """The metric the console line shows (``eval_loss``, ``eval_reward``)."""

    def metrics(self, core: StepCore, device: torch.device) -> dict[str, float]:
        """Cluster-wide ``eval_*`` metrics (all workers must call it)."""
        ...


class Feed(Protocol):
    """Where a worker's optimizer steps get their micro-batches."""

    def next_window(self) -> tuple[list[dict[str, torch.Tensor]], MetricSums]:
        """The micro-batches of the next optimizer step (on the worker's device) and metrics of making them."""
        ...

    def stepped(self, core: StepCore, state: TrainState) -> MetricSums:
        """Called by every worker after each optimizer step (``state`` already counts it)."""
        ...

    def evaluation(self, shard: Any) -> Evaluation:
        """How this feed's run is measured on the validation ``shard`` (every worker holds it whole)."""
        ...


@dataclass
class WorkerContext:
    """What a feed may need of its worker."""

    cfg: JobConfig
    plan: RunPlan
    core: StepCore
    tokenizer: Any
    state: TrainState
    rank: int
    world: int
    device: torch.device
    extra: dict[str, Any]
    """``train_loop_config["feed"]``: what the driver handed the feed (rollout engine handles)."""


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point of the offline stages; ``config`` is ``{"job": JobConfig dump, "plan": RunPlan dump}``."""
    run_worker(config, data_feed)


def run_worker(config: dict[str, Any], make_feed: Callable[[WorkerContext], Feed]) -> None:
    """Build (or restore) the training state, then step on what ``make_feed`` feeds until the plan is done."""
    import ray.train

    cfg = JobConfig.model_validate(config["job"])
    plan = RunPlan(**config["plan"])
    rank = ray.train.get_context().get_world_rank()
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.scaling.use_gpu else torch.device("cpu")
    if plan.threads and not cfg.scaling.use_gpu:
        torch.set_num_threads(plan.threads)
    torch.manual_seed(cfg.train.seed)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and plan.start_from is not None:
        checkpoint = ray.train.Checkpoint(plan.start_from)
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None) as folder:
        core, tokenizer = build_training(cfg, plan.total_steps, device, Path(folder) if folder else None)
        state = restore_state(Path(folder), core, cfg.train) if folder else TrainState()
    trackers = Trackers([])
    if rank == 0:
        _announce(core, cfg, plan, state)
        _trim_metrics(plan.run_dir, state.global_step)
        trackers = open_trackers(cfg, plan.run_dir, state.global_step)
    world = ray.train.get_context().get_world_size()
    feed = make_feed(WorkerContext(cfg, plan, core, tokenizer, state, rank, world, device, config.get("feed", {})))
    evaluation = feed.evaluation(ray.train.get_dataset_shard("eval")) if plan.has_eval else None
    try:
        _run(core, tokenizer, cfg, plan, state, feed, evaluation, rank, device, trackers)
    finally:
        trackers.close()
    if rank == 0 and cfg.tracking.plot_loss and (figure := plot_loss(plan.run_dir)) is not None:
        print(f"raytune_ft: loss curve {figure}", flush=True)


class _BatchFeed:
    """``gradient_accumulation_steps`` micro-batches of the dataset shard per step, each in its forward passes."""

    def __init__(self, ctx: WorkerContext, batches: Iterator[list[dict[str, torch.Tensor]]], collate: Collate) -> None:
        self.ctx, self.batches, self.collate = ctx, batches, collate

    def next_window(self) -> tuple[list[dict[str, torch.Tensor]], MetricSums]:
        steps, device = self.ctx.cfg.train.gradient_accumulation_steps, self.ctx.device
        return [move_batch(part, device) for _ in range(steps) for part in next(self.batches)], {}

    def stepped(self, core: StepCore, state: TrainState) -> MetricSums:
        return {}

    def evaluation(self, shard: Any) -> Evaluation:
        return _Evaluation(shard, self.ctx.cfg, self.collate, self.ctx.rank, self.ctx.world)


def data_feed(ctx: WorkerContext) -> Feed:
    """The worker's shard of the tokenized ``train`` dataset, collated (and balanced) into micro-batches."""
    import ray.train

    cfg, model = ctx.cfg, ctx.core.strategy.unwrap(ctx.core.model)
    collate = collator(cfg, model, ctx.tokenizer.pad_token_id)
    shard = ray.train.get_dataset_shard("train")
    balance = ctx.world > 1 and cfg.data.balance_micro_batches and _padding_free(cfg, model)
    seed = cfg.train.seed + 1000 * ctx.rank
    passes = forward_passes(collate, forward_budget(cfg, model, ctx.device, ctx.core.strategy.even_passes))
    batches = _micro_batches(shard, cfg, passes, ctx.state, seed=seed, balance=balance)
    return _BatchFeed(ctx, batches, collate)


def _run(
    core: StepCore,
    tokenizer: Any,
    cfg: JobConfig,
    plan: RunPlan,
    state: TrainState,
    feed: Feed,
    evaluation: Evaluation | None,
    rank: int,
    device: torch.device,
    trackers: Trackers,
) -> None:
    import ray.train

    if state.global_step >= plan.total_steps and rank == 0:
        print(f"raytune_ft: run already complete at step {state.global_step}; nothing to train", flush=True)
    meter = Meter(total_steps=plan.total_steps)
    while state.global_step < plan.total_steps:
        window, made = feed.next_window()
        stats = core.step(window)
        state.global_step += 1
        stats.metrics = {**stats.metrics, **made, **feed.stepped(core, state)}
        meter.add(stats)
        if stats.skipped and rank == 0:
            print(
                f"raytune_ft: step {state.global_step}: fp16 gradients overflowed (inf/nan), update skipped; "
                f"loss scale now {stats.loss_scale:g}",
                flush=True,
            )
        done = state.global_step == plan.total_steps
        log = done or state.global_step % cfg.train.logging_steps == 0
        save = done or state.global_step % cfg.train.save_steps == 0
        evaluate = evaluation is not None and (done or state.global_step % evaluation.every == 0)
        if not (log or save or evaluate):
            continue
        metrics: dict[str, Any] = meter.flush(core.strategy, state.global_step) if log else {"step": state.global_step}
        if evaluate and evaluation is not None:
            metrics.update(evaluation.metrics(core, device))
        if (log or evaluate) and rank == 0:
            print(meter.format(metrics) if log else f"step {state.global_step}", end="", flush=True)
            headline = evaluation.headline if evaluate and evaluation is not None else ""
            print(f" | {headline} {metrics[headline]:.4f}" if headline else "", flush=True)
            _append_metrics(plan.run_dir, metrics)
            trackers.log(metrics)
        if save:
            _report_checkpoint(metrics, core, tokenizer, cfg, state, rank)
        elif evaluate or plan.report_logs:
            ray.train.report(metrics)


def collator(cfg: JobConfig, model: Any, pad_id: int) -> Collate:
    """Padding-free micro-batches (``data.padding_free``) where the architecture keeps attention inside
    each sample, padded ones otherwise; already packed rows (``data.packing``) are only padded, and
    preference and KTO rows have their sequences stacked (``pad_scored``)."""
    if cfg.method.rows in SCORED_SEQUENCES:
        prefixes = SCORED_SEQUENCES[cfg.method.rows]
        return lambda b: pad_scored(b, pad_id, prefixes)
    if is_vision_language_model(model):  # padded: image features take their places in each row as it is
        return lambda b: with_image_arrays(model, pad_batch(b["input_ids"], b["labels"], pad_id), b.get("media"))
    if not _padding_free(cfg, model):
        return lambda b: pad_batch(b["input_ids"], b["labels"], pad_id, b.get("position_ids"))
    return lambda b: pack_batch(b["input_ids"], b["labels"], pad_id, cfg.data.cutoff_len)


def _padding_free(cfg: JobConfig, model: Any) -> bool:
    """Whether micro-batches are packed padding-free: plain rows, ``data.padding_free``, and a model
    that keeps attention inside each sample."""
    if cfg.method.rows in SCORED_SEQUENCES or cfg.data.packing:
        return False
    return cfg.data.padding_free and keeps_attention_in_sample(model)


CPU_FORWARD_TOKENS = 256
"""``train.max_tokens_per_forward: auto`` on CPU: a pass of a couple of hundred tokens already keeps a CPU's cores
busy, while each token's activations take over a megabyte (1.3 MB in float32 on SmolLM2-135M's 30 layers)."""


def forward_budget(cfg: JobConfig, model: Any, device: torch.device, even_passes: bool) -> int | None:
    """Tokens per forward pass of a micro-batch of text rows (``train.max_tokens_per_forward``); None runs each
    micro-batch in one pass. Scored rows (preference, KTO) and image rows always run whole, and so does every
    micro-batch under a strategy whose workers must run the same number of passes (``even_passes``: fsdp2,
    ZeRO-2 and -3)."""
    budget = cfg.train.max_tokens_per_forward
    whole = cfg.method.rows in SCORED_SEQUENCES or is_vision_language_model(model) or even_passes
    if whole or budget is None:
        return None
    if budget == "auto":
        return None if device.type == "cuda" else CPU_FORWARD_TOKENS
    return budget


def forward_passes(collate: Collate, budget: int | None) -> Callable[[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """A micro-batch's rows as the collated batches of its forward passes: one pass, or with a token
    ``budget``, runs of consecutive whole rows of at most ``budget`` tokens (``token_runs``)."""
    if budget is None:
        return lambda rows: [collate(rows)]

    def passes(rows: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        runs = token_runs([len(ids) for ids in rows["input_ids"]], budget)
        return [collate(_rows_at(rows, run)) for run in runs]

    return passes


BALANCE_WINDOW = 32
"""Micro-batches whose rows ``data.balance_micro_batches`` regroups together."""


def _micro_batches(
    shard: Any,
    cfg: JobConfig,
    collate: Callable[[dict[str, Any]], T],
    state: TrainState,
    seed: int,
    balance: bool = False,
) -> Iterator[T]:
    """Endless collated micro-batches over epochs, skipping those a resumed run already consumed. With
    ``balance``, rows are read a window at a time and regrouped into micro-batches of even token counts
    (``balanced_groups``); the regrouping is a function of the window, so a resumed run skips the same
    micro-batches it consumed."""
    skip = state.batches_in_epoch
    buffer = cfg.data.shuffle_buffer_size if cfg.data.shuffle else None
    size = cfg.train.per_device_batch_size
    while True:
        seen = 0
        for rows in shard.iter_batches(
            batch_size=size * (BALANCE_WINDOW if balance else 1),
            batch_format="numpy",
            local_shuffle_buffer_size=buffer,
            local_shuffle_seed=seed + state.epoch if buffer else None,
        ):
            for batch in _regrouped(rows, size) if balance else (rows,):
                seen += 1
                if seen <= skip:
                    continue
                state.batches_in_epoch = seen
                yield collate(batch)
        if seen == 0:
            raise no_trainable_rows(cfg.data, cfg.method.rows)
        state.epoch, state.batches_in_epoch, skip = state.epoch + 1, 0, 0


def _regrouped(rows: dict[str, Any], size: int) -> Iterator[dict[str, Any]]:
    """A window of rows as micro-batches of ``size`` rows with even token counts."""
    for group in balanced_groups([len(ids) for ids in rows["input_ids"]], size):
        yield _rows_at(rows, group)


def _rows_at(rows: dict[str, Any], indices: list[int]) -> dict[str, Any]:
    """The rows at ``indices`` (in that order) of a numpy batch of columns."""
    import numpy as np

    index = np.asarray(indices)
    return {key: column[index] for key, column in rows.items()}


class _Evaluation:
    """The validation shard and how to turn it into one cluster-wide ``eval_loss``."""

    headline = "eval_loss"

    def __init__(self, shard: Any, cfg: JobConfig, collate: Collate, rank: int, world_size: int) -> None:
        self.shard = shard
        self.rank, self.world_size = rank, world_size
        self.batch_size = cfg.train.per_device_batch_size
        self.collate = collate
        self.perplexity = cfg.method.rows in ("sft", "pt")  # exp(loss) means something for LM losses only
        self.every = cfg.train.eval_every

    def metrics(self, core: StepCore, device: torch.device) -> dict[str, float]:
        """``eval_loss`` (the token mean over every worker's validation rows), its perplexity and the
        objective's own metrics with an ``eval_`` prefix (all workers must call it).

        Every worker holds the whole validation set and evaluates every world_size-th batch. Under a
        strategy whose forward is collective, workers with one batch fewer run an uncounted forward
        so that all run the same number.
        """
        mine, count, filler = [], 0, None
        for i, b in enumerate(self.shard.iter_batches(batch_size=self.batch_size, batch_format="numpy")):
            count, filler = count + 1, b if filler is None else filler
            if i % self.world_size == self.rank:
                mine.append(b)
        rounds = math.ceil(count / self.world_size) if core.strategy.collective_forward else len(mine)
        idle = [filler] * (rounds - len(mine)) if filler is not None else []
        loss_sum, terms, own = core.evaluate(self._moved(mine, device), idle=self._moved(idle, device))
        total_loss, total_terms = core.strategy.all_reduce_sum([loss_sum, terms])
        loss = total_loss / max(total_terms, 1.0)
        perplexity = {"eval_perplexity": math.exp(min(loss, 50.0))} if self.perplexity else {}
        return {"eval_loss": loss, **perplexity, **reduce_metrics(core.strategy, own, "eval_")}

    def _moved(self, batches: list[dict[str, Any]], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
        for b in batches:
            yield move_batch(self.collate(b), device)


def _report_checkpoint(
    metrics: dict[str, Any], core: StepCore, tokenizer: Any, cfg: JobConfig, state: TrainState, rank: int
) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="raytune_ft-ckpt-") as tmp:
        wrote = save_checkpoint(Path(tmp), core, tokenizer, cfg, state)  # Ray merges the workers' folders
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if wrote else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint-{state.global_step:06d}")


def _append_metrics(run_dir: str, metrics: dict[str, Any]) -> None:
    """Append to ``run_dir/metrics.jsonl`` (local storage only), the file monitors tail."""
    if "://" in run_dir:
        return
    path = Path(run_dir) / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"time": time.time(), **metrics}) + "\n")


def _trim_metrics(run_dir: str, step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from (they will be logged again)."""
    path = Path(run_dir) / "metrics.jsonl"
    if "://" in run_dir or not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _loraplus(cfg: JobConfig) -> str:
    ratio = cfg.train.loraplus_lr_ratio
    return f" (LoRA+: B matrices at {ratio:g}x the learning rate)" if ratio else ""


def _precision(cfg: JobConfig) -> str:
    precision = compute_precision(cfg)
    if precision in ("bf16", "fp16"):
        scaling = ", dynamic loss scale" if precision == "fp16" else ""
        return f"{precision} (autocast over {cfg.model.dtype} weights, float32 trainable weights{scaling})"
    return f"{precision} ({cfg.model.dtype} weights)"


def _announce(core: StepCore, cfg: JobConfig, plan: RunPlan, state: TrainState) -> None:
    trainable, total = trainable_parameters(core.model)
    resumed = f", resuming at step {state.global_step}" if state.global_step else ""
    print(
        f"raytune_ft: {cfg.adapter.type} {cfg.method.stage} on {cfg.model.source}: "
        f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%); "
        f"{plan.total_steps} steps of {cfg.train.optimizer}{_loraplus(cfg)} in {_precision(cfg)}{resumed}",
        flush=True,
    )
    model = core.strategy.unwrap(core.model)
    model_type = getattr(model.config, "model_type", "?")
    if cfg.data.packing and not keeps_attention_in_sample(model):
        print(
            f"raytune_ft: WARNING: data.packing on model type {model_type!r}, which is not checked to keep "
            "attention inside each packed sample (raytune_ft.models.PACKED_ATTENTION); samples sharing a "
            "row may attend to each other. Set data.packing: false unless you know it does.",
            flush=True,
        )
