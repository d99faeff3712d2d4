"""The ``tune:`` section as Ray Tune objects: the search space, the scheduler, each trial's config.

Trials are drawn over dotted config keys (``train.learning_rate``), so a trial's values are applied
to the job's own config and validated like any other config before any worker starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from raytune_ft.config import JobConfig, SearchDimension, TuneConfig, with_values

__all__ = ["SCHEDULERS", "expected_trials", "grace_steps", "num_samples", "search_space", "sweep_base", "trial_config"]


def _domain(dimension: SearchDimension, grid: bool = True) -> Any:
    from ray import tune

    values = dimension.values
    forms: dict[str, Callable[[], Any]] = {
        "choice": lambda: tune.choice(values),
        "grid": lambda: tune.grid_search(values) if grid else tune.choice(values),
        "uniform": lambda: tune.uniform(*values),
        "loguniform": lambda: tune.loguniform(*values),
        "randint": lambda: tune.randint(values[0], values[1] + 1),  # Ray's upper bound is excluded
    }
    return forms[dimension.form]()


def search_space(tune_cfg: TuneConfig) -> dict[str, Any]:
    """Ray Tune's ``param_space``: one domain per swept key, keyed by the dotted key itself."""
    return {key: _domain(dimension) for key, dimension in tune_cfg.space.items()}


def num_samples(tune_cfg: TuneConfig) -> int:
    """``tune.num_samples``, else 1 when every key is a grid (the grid is the sweep) and 4 otherwise."""
    if tune_cfg.num_samples is not None:
        return tune_cfg.num_samples
    return 1 if all(d.form == "grid" for d in tune_cfg.space.values()) else 4


def expected_trials(tune_cfg: TuneConfig) -> int:
    """Trials the sweep runs in all: ``num_samples`` times every combination of the grid keys."""
    total = num_samples(tune_cfg)
    for dimension in tune_cfg.space.values():
        total *= len(dimension.values) if dimension.form == "grid" else 1
    return total


def sweep_base(cfg: JobConfig) -> JobConfig:
    """What every trial starts from: ``cfg`` without its ``tune`` section, with the trials' scaling."""
    scaling = cfg.tune.scaling or cfg.scaling
    return cfg.model_copy(update={"tune": TuneConfig(), "scaling": scaling})


def trial_config(base: JobConfig, values: Mapping[str, Any], run_name: str, storage_path: str) -> JobConfig:
    """``base`` with one trial's drawn ``values``, as a run named ``run_name`` under ``storage_path``."""
    return with_values(base, {**values, "train.run_name": run_name, "train.storage_path": storage_path})


def grace_steps(cfg: JobConfig, total_steps: int) -> int:
    """ASHA's grace period: ``tune.grace_period``, else the step of the first report carrying the metric."""
    if cfg.tune.grace_period is not None:
        return min(cfg.tune.grace_period, total_steps)
    first = cfg.train.logging_steps if not cfg.tune.metric.startswith("eval_") else None
    return min(first or cfg.train.eval_every, total_steps)


def _asha(cfg: JobConfig, total_steps: int) -> Any:
    from raytune_ft.tune.asha import ResumableASHA

    return ResumableASHA(
        time_attr="step",
        max_t=total_steps,
        grace_period=grace_steps(cfg, total_steps),
        reduction_factor=cfg.tune.reduction_factor,
    )


def _pbt(cfg: JobConfig, total_steps: int) -> Any:
    from ray.tune.schedulers import PopulationBasedTraining

    return PopulationBasedTraining(
        time_attr="step",
        perturbation_interval=cfg.tune.perturbation_interval or cfg.train.save_steps,
        hyperparam_mutations={key: _domain(d, grid=False) for key, d in cfg.tune.space.items()},
    )


def _fifo(cfg: JobConfig, total_steps: int) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


SCHEDULERS: dict[str, Callable[[JobConfig, int], Any]] = {"asha": _asha, "pbt": _pbt, "fifo": _fifo}
"""``tune.scheduler`` -> a builder of the Ray Tune scheduler for a sweep of ``total_steps``-step trials."""
