"""Sweep stage: Ray Tune over whole distributed training runs, with ASHA, PBT or FIFO scheduling,
one tokenized dataset shared by every trial, and a results table plus the best trial's config."""

from .results import SweepFiles, TrialRow, best_trial, format_table, trial_rows, write_results
from .space import SCHEDULERS, expected_trials, grace_steps, num_samples, search_space, sweep_base, trial_config
from .sweep import SweepOutcome, SweepPlan, check_sweep, plan_sweep, run_sweep
from .trial import POINTER_FILE, ForwardReports, checkpoint_of, run_trial

__all__ = [
    "POINTER_FILE",
    "SCHEDULERS",
    "ForwardReports",
    "SweepFiles",
    "SweepOutcome",
    "SweepPlan",
    "TrialRow",
    "best_trial",
    "check_sweep",
    "checkpoint_of",
    "expected_trials",
    "format_table",
    "grace_steps",
    "num_samples",
    "plan_sweep",
    "run_sweep",
    "run_trial",
    "search_space",
    "sweep_base",
    "trial_config",
    "trial_rows",
    "write_results",
]
