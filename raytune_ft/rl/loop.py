"""The online stages' feed: each optimizer step learns from answers the rollout engines just generated.

Per generated batch, every training worker takes its share of ``rollout.prompts_per_step`` prompts from
its Ray Data shard, asks its engine (worker r uses engine r mod ``rollout.num_engines``) for
``method.group_size`` answers to each, scores them with the rewards, and turns the scores into the
micro-batches it steps on (``WINDOWS[method.stage]``): the GRPO family derives one advantage per answer
from its group (``ADVANTAGE_ESTIMATORS[method.loss]``); PPO asks its critic for per-token values and runs
GAE over KL-penalised per-token rewards. After each step the weights go to the engines (``rollout.weight_sync``,
``raytune_ft.rl.sync``). The loop around it is the offline stages' own (``run_worker``), so checkpoints, exact
resume, logging and trackers work the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raytune_ft.config import JobConfig
from raytune_ft.data import IGNORE_INDEX, no_trainable_rows, pad_batch
from raytune_ft.train import StepCore, TrainState
from raytune_ft.train.loop import Evaluation, WorkerContext, run_worker
from raytune_ft.train.losses import (
    ADVANTAGE_ESTIMATORS,
    Moments,
    adaptive_kl_coef,
    gae,
    kl_penalized_rewards,
    masked_whiten,
    summed_moments,
    token_kl,
    update_moments,
)
from raytune_ft.train.objectives import MetricSums, add_metric_sums
from raytune_ft.train.progress import reduce_metrics
from raytune_ft.train.reference import policy_outputs

from .engine import Generation
from .rewards import RewardFn, load_reward, score_completions
from .sync import SYNCS, weight_sync

__all__ = ["ONLINE_EVAL", "WINDOWS", "RolloutFeed", "answer_batches", "rl_loop_per_worker"]

FILTERED_LOSSES = frozenset({"dapo"})
"""Losses that leave out groups whose answers all scored the same (DAPO's dynamic sampling, without refill)."""


def rl_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point of the online stages: ``config`` as for the offline ones, plus ``feed``
    holding the rollout ``engines`` and the run's weight ``store``."""
    run_worker(config, RolloutFeed)


def answer_batches(
    prompts: list[np.ndarray],
    generation: Generation,
    advantages: torch.Tensor,
    rows: list[int],
    size: int,
    pad_id: int,
    key: str = "advantages",
) -> list[dict[str, torch.Tensor]]:
    """Micro-batches of ``size`` rows, each a prompt and one of its answers (``rows`` index the answers,
    ``group`` per prompt in order): ``labels`` mark the answer, ``key`` holds its entry of ``advantages``
    (one per answer) and ``rollout_logps`` the engine's log-probs in the layout of ``token_logps``
    (row, position - 1)."""
    group = len(generation.completions) // len(prompts)
    batches = []
    for start in range(0, len(rows), size):
        chosen = rows[start : start + size]
        ids = [[*map(int, prompts[i // group]), *generation.completions[i]] for i in chosen]
        labels = [[IGNORE_INDEX] * len(prompts[i // group]) + generation.completions[i] for i in chosen]
        batch = pad_batch(ids, labels, pad_id)
        engine_logps = torch.zeros(batch["labels"][:, 1:].shape)
        for row, i in enumerate(chosen):
            first, answer = len(prompts[i // group]) - 1, generation.logprobs[i]
            engine_logps[row, first : first + len(answer)] = torch.tensor(answer)
        batch["rollout_logps"] = engine_logps
        batch[key] = advantages[chosen].float()
        batches.append(batch)
    return batches


class RolloutFeed:
    """Generated, scored and advantage-weighted answers: each generated batch makes ``method.ppo_epochs``
    passes over its windows (one window, or PPO's ``ppo_buffer_size``), one optimizer step each."""

    def __init__(self, ctx: WorkerContext) -> None:
        import ray.train

        self.ctx, cfg = ctx, ctx.cfg
        engines = ctx.extra["engines"]
        self.engine, self.sync = engines[ctx.rank % len(engines)], SYNCS[weight_sync(cfg)](ctx)
        share = cfg.rollout.prompts_per_step // ctx.world
        shard = ray.train.get_dataset_shard("train")
        self.prompts = _prompt_batches(shard, cfg, ctx.state, share, seed=cfg.train.seed + 1000 * ctx.rank)
        weights, served = cfg.method.reward_weights or [1.0] * len(cfg.method.reward), ctx.extra.get("reward_models")
        self.rewards: dict[str, tuple[RewardFn, float]] = {
            name: (load_reward(name, cfg.method.max_new_tokens, served, cfg.method.judge), weight)
            for name, weight in zip(cfg.method.reward, weights, strict=True)
        }
        self.pending: list[list[dict[str, torch.Tensor]]] = []
        self.overlap = cfg.rollout.async_ == "one_step"
        self.ahead: _Request | None = None
        self.sync.publish(ctx.core, ctx.state.global_step, first=True)

    def next_window(self) -> tuple[list[dict[str, torch.Tensor]], MetricSums]:
        if self.pending:
            return self.pending.pop(0), {}
        cfg, state = self.ctx.cfg, self.ctx.state
        request = self.ahead or self._request(state.global_step)
        # rollout.async one_step: the next answers are generated (with these weights) while this step trains
        self.ahead = self._request(state.global_step) if self.overlap else None
        scored = self._scored(request)
        if cfg.method.loss in FILTERED_LOSSES:
            scored = self._refilled(scored)
        windows, made = WINDOWS[cfg.method.stage](self, scored.prompts, scored.generation, scored.scores)
        self.pending = [window for _ in range(cfg.method.ppo_epochs) for window in windows][1:]
        return windows[0], {**scored.metrics, **made}

    def _scored(self, request: _Request) -> _Scored:
        """The request's answers (waited for) and their scores; the data position counts as consumed now."""
        import ray

        generation: Generation = ray.get(request.answers)
        state = self.ctx.state
        # the latest batch consumed: refills can take batches after one already asked for (rollout.async)
        state.epoch, state.batches_in_epoch = max((state.epoch, state.batches_in_epoch), (request.epoch, request.index))
        prompts = list(request.rows["prompt_ids"])
        scores, metrics = self._score(request.rows, prompts, generation)
        return _Scored(prompts, generation, scores, metrics)

    def _refilled(self, scored: _Scored) -> _Scored:
        """DAPO's dynamic sampling: the step's informative groups (answers that scored differently), with more
        batches of prompts generated by the same weights until it holds as many as it has prompts
        (``method.max_refills`` rounds at most). The metrics count every answer generated."""
        group, wanted = self.ctx.cfg.method.group_size, len(scored.prompts)
        parts = [scored]
        kept = [_informative_groups(scored.scores, group)]
        while sum(map(len, kept)) < wanted and len(parts) <= self.ctx.cfg.method.max_refills:
            parts.append(self._scored(self._request(self.ctx.state.global_step)))
            kept.append(_informative_groups(parts[-1].scores, group))
        filled = _fill_groups(parts, kept, group, wanted)
        generated = float(sum(len(p.prompts) for p in parts))
        filled.metrics["rollout/groups_kept"] = (float(sum(map(len, kept))), generated)
        filled.metrics["rollout/refills"] = (float(len(parts) - 1), 1.0)
        return filled

    def batches(
        self, prompts: list[np.ndarray], generation: Generation, values: torch.Tensor, rows: list[int], key: str
    ) -> list[dict[str, torch.Tensor]]:
        """``answer_batches`` of this worker's micro-batch size, on its device."""
        size, pad = self.ctx.cfg.train.per_device_batch_size, self.ctx.tokenizer.pad_token_id
        return [
            {name: value.to(self.ctx.device) for name, value in batch.items()}
            for batch in answer_batches(prompts, generation, values, rows, size, pad, key)
        ]

    def _request(self, version: int) -> _Request:
        epoch, index, rows = next(self.prompts)
        answers = self.engine.generate.remote(list(rows["prompt_ids"]), version, self.ctx.cfg.method.group_size)
        return _Request(epoch, index, rows, answers)

    def stepped(self, core: StepCore, state: TrainState) -> MetricSums:
        return {"sync/publish_s": (self.sync.publish(core, state.global_step), 1.0)}

    def evaluation(self, shard: Any) -> Evaluation:
        return _RewardEvaluation(self, shard)

    def _score(
        self, rows: dict[str, Any], prompts: list[np.ndarray], generation: Generation, group: int | None = None
    ) -> tuple[torch.Tensor, MetricSums]:
        group = group or self.ctx.cfg.method.group_size
        decode = self.ctx.tokenizer.batch_decode
        answers = decode(generation.completions, skip_special_tokens=True)
        prompt_texts = [text for text in decode(prompts, skip_special_tokens=False) for _ in range(group)]
        truths = [str(truth) for truth in rows["answer"] for _ in range(group)]
        total, each = score_completions(
            self.rewards, prompts=prompt_texts, completions=answers, completion_ids=generation.completions,
            answer=truths,
        )  # fmt: skip
        scores = torch.tensor([0.0 if s is None else s for s in total])
        tokens = sum(len(c) for c in generation.completions)
        metrics: MetricSums = {
            "reward": (float(scores.sum()), scores.numel()),
            "reward_std": (float(scores.std()) if scores.numel() > 1 else 0.0, 1.0),
            **{f"reward/{name}": _mean_of(values) for name, values in each.items()},
            "response_length": (float(tokens), len(generation.completions)),
            "rollout/truncated": (float(sum(generation.truncated)), len(generation.truncated)),
            "rollout/tokens_per_s": (float(tokens), generation.generate_s),
            "sync/engine_s": (generation.sync_s, 1.0),
        }
        return scores, metrics

    @torch.no_grad()
    def current_policy(self, batches: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, Any]]:
        """The policy as it is now (it generated these answers), per batch: its per-token log-probs and
        whole output (PPO's critic values ride along), one no-grad forward each."""
        core = self.ctx.core
        model = core.strategy.unwrap(core.model)
        outputs = []
        with core.precision.autocast():
            for batch in batches:
                logps, _, out = policy_outputs(model, batch, self.ctx.cfg.method.temperature)
                outputs.append((logps, out))
        return outputs

    def batch_moments(self, values: torch.Tensor) -> tuple[float, float]:
        """Mean and std of ``values`` over every worker's share of the generated batch (``BatchMoments``)."""
        return summed_moments(*self.batch_sums(values))

    def batch_sums(self, values: torch.Tensor) -> tuple[float, float, float]:
        """Count, sum and sum of squares of ``values`` over every worker's share of the generated batch."""
        sums = [float(values.numel()), float(values.sum()), float((values.double() ** 2).sum())]
        count, total, squares = self.ctx.core.strategy.all_reduce_sum(sums)
        return count, total, squares

    def add_old_logps(self, window: list[dict[str, torch.Tensor]]) -> None:
        """The generating policy's log-probs, before the first of several updates on the same answers."""
        for batch, (logps, _) in zip(window, self.current_policy(window), strict=True):
            batch["old_logps"] = logps


Windows = list[list[dict[str, torch.Tensor]]]


def group_windows(
    feed: RolloutFeed, prompts: list[np.ndarray], generation: Generation, scores: torch.Tensor
) -> tuple[Windows, MetricSums]:
    """The GRPO family: one window of every answer (DAPO's: of the informative groups the feed kept), each
    carrying its group-relative advantage."""
    cfg = feed.ctx.cfg
    advantages = ADVANTAGE_ESTIMATORS[cfg.method.loss](scores, cfg.method.group_size, feed.batch_moments)
    window = feed.batches(prompts, generation, advantages, list(range(scores.numel())), "advantages")
    if feed.overlap:  # generated one update ago: the engine's log-probs are the old policy's
        for batch in window:
            batch["old_logps"] = batch["rollout_logps"]
    elif cfg.method.ppo_epochs > 1:
        feed.add_old_logps(window)
    return [window], {}


def critic_windows(
    feed: RolloutFeed, prompts: list[np.ndarray], generation: Generation, scores: torch.Tensor
) -> tuple[Windows, MetricSums]:
    """PPO: ``method.ppo_buffer_size`` windows, whose rows carry per-token advantages (GAE over the
    KL-penalised rewards, whitened over the batch) and returns, and the generating policy's log-probs and
    critic's values. The KL coefficient adapts (and rewards are normalised) over every worker's answers,
    so each worker holds the same values in ``TrainState.online``."""
    cfg, state = feed.ctx.cfg, feed.ctx.state
    made: MetricSums = {}
    if cfg.method.ppo_score_norm:
        scores = _normalized_scores(feed, scores)
    parts = np.array_split(np.arange(len(generation.completions)), cfg.method.ppo_buffer_size)
    windows = [feed.batches(prompts, generation, scores, part.tolist(), "scores") for part in parts]
    batches = [batch for window in windows for batch in window]
    masks = [batch["labels"][:, 1:] != IGNORE_INDEX for batch in batches]
    kls = _generating_policy(feed, batches)
    per_answer = torch.cat([(kl * mask).sum(1) for kl, mask in zip(kls, masks, strict=True)])
    kl_sum, answers = feed.ctx.core.strategy.all_reduce_sum([float(per_answer.sum()), float(per_answer.numel())])
    coef = state.online.get("kl_coef", cfg.method.kl_coef)
    made["kl"], made["kl_coef"] = (float(per_answer.sum()), float(per_answer.numel())), (coef, 1.0)
    if cfg.method.ppo_target is not None:
        state.online["kl_coef"] = adaptive_kl_coef(coef, kl_sum / answers, cfg.method.ppo_target, int(answers))
    rewards = [kl_penalized_rewards(b["scores"], kl, m, coef) for b, kl, m in zip(batches, kls, masks, strict=True)]
    if cfg.method.ppo_whiten_rewards:
        rewards = _whitened(rewards, masks, shift_mean=False)
    advantages = []
    for batch, reward, mask in zip(batches, rewards, masks, strict=True):
        advantage, batch["returns"] = gae(reward, batch["old_values"], mask, cfg.method.gamma, cfg.method.lam)
        advantages.append(advantage)
    for batch, advantage in zip(batches, _whitened(advantages, masks), strict=True):
        batch["advantages"] = advantage
    return windows, made


def _generating_policy(feed: RolloutFeed, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Adds each batch's ``old_logps`` (the engine's under ``rollout.async: one_step``, generated one update
    ago) and ``old_values``; returns its per-token KL to the reference (0 without one)."""
    core, method = feed.ctx.core, feed.ctx.cfg.method
    for batch, (logps, out) in zip(batches, feed.current_policy(batches), strict=True):
        batch["old_values"] = out["values"][:, :-1].float() * (batch["labels"][:, 1:] != IGNORE_INDEX)
        batch["old_logps"] = batch["rollout_logps"] if feed.overlap else logps
    if core.reference is None or method.kl == "none":
        return [torch.zeros_like(batch["old_logps"]) for batch in batches]
    with core.precision.autocast():
        return [
            token_kl(batch["old_logps"], core.reference.token_logps(batch, method.temperature), method.kl)
            for batch in batches
        ]


def _normalized_scores(feed: RolloutFeed, scores: torch.Tensor) -> torch.Tensor:
    """Scores minus the running mean of every score so far, over the running std (all workers' answers)."""
    state = feed.ctx.state
    count, total, squares = feed.batch_sums(scores)
    mean, std = summed_moments(count, total, squares, ddof=0)
    saved = Moments(*(state.online.get(f"score_{name}", 0.0) for name in Moments._fields))
    moments = update_moments(saved, mean, std**2, count)
    state.online.update({f"score_{name}": value for name, value in moments._asdict().items()})
    return (scores - moments.mean) / (moments.std + 1e-8)


def _whitened(tensors: list[torch.Tensor], masks: list[torch.Tensor], shift_mean: bool = True) -> list[torch.Tensor]:
    """``masked_whiten`` over the masked entries of several tensors together (micro-batches of one batch)."""
    flat = torch.cat([tensor[mask] for tensor, mask in zip(tensors, masks, strict=True)])
    white = masked_whiten(flat, torch.ones_like(flat), shift_mean)
    out, start = [], 0
    for tensor, mask in zip(tensors, masks, strict=True):
        placed = torch.zeros_like(tensor)
        placed[mask] = white[start : start + int(mask.sum())]
        start += int(mask.sum())
        out.append(placed)
    return out


EVAL_KEPT = {"reward": "reward", "response_length": "response_length", "rollout/truncated": "truncated"}
"""A step's metric -> its name (after ``eval_``) on the validation split; so is each ``reward/<name>``."""

ONLINE_EVAL = tuple(f"eval_{name}" for name in EVAL_KEPT.values())
"""What an online stage reports on its validation split (and each ``eval_reward/<name>``)."""


class _RewardEvaluation:
    """The validation prompts (``data.val_size``, ``data.eval_dataset``), each answered once, greedily, by the
    engine with the weights just published, and scored by the run's rewards: ``eval_reward``, each
    ``eval_reward/<name>``, ``eval_response_length`` and ``eval_truncated``. Each worker answers every
    world-th batch of ``rollout.prompts_per_step`` x ``method.group_size`` prompts (as many answers as a
    step generates) on the engine it generates with."""

    headline = "eval_reward"

    def __init__(self, feed: RolloutFeed, shard: Any) -> None:
        self.feed, self.shard = feed, shard
        self.every = feed.ctx.cfg.train.eval_every

    def metrics(self, core: StepCore, device: torch.device) -> dict[str, float]:
        import ray

        ctx = self.feed.ctx
        kept = dict(EVAL_KEPT)
        kept.update({f"reward/{name}": f"reward/{name}" for name in ctx.cfg.method.reward})
        sums: MetricSums = dict.fromkeys(kept.values(), (0.0, 0.0))  # every worker reduces the same names
        size = ctx.cfg.rollout.prompts_per_step * ctx.cfg.method.group_size
        batches = self.shard.iter_batches(batch_size=size, batch_format="numpy")
        for i, rows in enumerate(batches):
            if i % ctx.world != ctx.rank:
                continue
            prompts = list(rows["prompt_ids"])
            answers = self.feed.engine.generate.remote(prompts, ctx.state.global_step, 1, greedy=True)
            _, made = self.feed._score(rows, prompts, ray.get(answers), group=1)
            add_metric_sums(sums, {kept[name]: value for name, value in made.items() if name in kept})
        return reduce_metrics(core.strategy, sums, "eval_")


WINDOWS = {"grpo": group_windows, "ppo": critic_windows}
"""``method.stage`` -> how a generated, scored batch becomes the windows of its optimizer steps."""


def _informative_groups(scores: torch.Tensor, group: int) -> list[int]:
    """The groups whose answers did not all score the same (the others have no advantage)."""
    return (scores.view(-1, group).std(dim=1) > 0).nonzero().flatten().tolist()


def _fill_groups(parts: list[_Scored], kept: list[list[int]], group: int, wanted: int) -> _Scored:
    """One scored batch of the first ``wanted`` informative groups of ``parts`` (``kept``: each part's; fewer
    when they hold fewer; the first group when none is informative, so every worker takes part in the step).
    Metrics add up."""
    chosen = [(part, g) for part, groups in zip(parts, kept, strict=True) for g in groups][:wanted]
    chosen = chosen or [(parts[0], 0)]
    answers = [(part, g * group + j) for part, g in chosen for j in range(group)]
    metrics: MetricSums = {}
    for part in parts:
        add_metric_sums(metrics, part.metrics)
    generation = Generation(
        completions=[part.generation.completions[i] for part, i in answers],
        logprobs=[part.generation.logprobs[i] for part, i in answers],
        truncated=[part.generation.truncated[i] for part, i in answers],
        generate_s=sum(part.generation.generate_s for part in parts),
        sync_s=sum(part.generation.sync_s for part in parts),
    )
    prompts = [part.prompts[g] for part, g in chosen]
    scores = torch.stack([part.scores[i] for part, i in answers])
    return _Scored(prompts, generation, scores, metrics)


def _mean_of(values: list[float | None]) -> tuple[float, float]:
    present = [v for v in values if v is not None]
    return float(sum(present)), float(len(present))


@dataclass
class _Scored:
    """A generated batch, scored: ``group`` answers per prompt in prompt order, and the metrics of making it."""

    prompts: list[np.ndarray]
    generation: Generation
    scores: torch.Tensor
    metrics: MetricSums


@dataclass
class _Request:
    """Prompts sent to an engine: where they sit in the data (epoch, batch number) and the answers to come."""

    epoch: int
    index: int
    rows: dict[str, Any]
    answers: Any
    """The engine call's object reference (a ``Generation``)."""


def _prompt_batches(
    shard: Any, cfg: JobConfig, state: TrainState, size: int, seed: int
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Endless (epoch, batch number, batch of ``size`` prompt rows) over epochs, skipping the batches a
    resumed run already used; the feed records a batch in ``state`` when it trains on it."""
    epoch, skip = state.epoch, state.batches_in_epoch
    buffer = cfg.data.shuffle_buffer_size if cfg.data.shuffle else None
    while True:
        seen = 0
        for rows in shard.iter_batches(
            batch_size=size, batch_format="numpy", drop_last=True, local_shuffle_buffer_size=buffer,
            local_shuffle_seed=seed + epoch if buffer else None,
        ):  # fmt: skip
            seen += 1
            if seen > skip:
                yield epoch, seen, rows
        if seen == 0:
            raise no_trainable_rows(cfg.data, cfg.method.rows, f"(fewer than {size} prompts per worker)")
        epoch, skip = epoch + 1, 0
