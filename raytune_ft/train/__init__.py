"""Training stage: objectives x strategies around one step core, the per-worker loop, checkpoints,
and the driver that launches it all with Ray Train's TorchTrainer."""

from .checkpoint import TrainState, restore_state, save_checkpoint
from .launch import (
    OFFLINE,
    JobData,
    TrainOutcome,
    WorkerSetup,
    absolute_storage,
    build_trainer,
    check_data_cpus,
    check_resume_compatible,
    compute_cpus,
    plan_total_steps,
    prepare_data,
    prepare_job_data,
    run_training,
    start_ray,
    worker_cpus,
)
from .loop import RunPlan, build_training, collator, train_loop_per_worker
from .objectives import OBJECTIVES, Objective, SFTObjective, causal_lm_loss_sum
from .step import StepCore, StepStats, build_optimizer, build_scheduler
from .strategies import STRATEGIES, DDPStrategy, DeepSpeedStrategy, FSDP2Strategy, Strategy
from .tokenizer import job_tokenizer, training_tokenizer

__all__ = [
    "OBJECTIVES",
    "OFFLINE",
    "STRATEGIES",
    "DDPStrategy",
    "DeepSpeedStrategy",
    "FSDP2Strategy",
    "JobData",
    "Objective",
    "RunPlan",
    "SFTObjective",
    "StepCore",
    "StepStats",
    "Strategy",
    "TrainOutcome",
    "TrainState",
    "WorkerSetup",
    "absolute_storage",
    "build_optimizer",
    "build_scheduler",
    "build_trainer",
    "build_training",
    "causal_lm_loss_sum",
    "check_data_cpus",
    "check_resume_compatible",
    "collator",
    "compute_cpus",
    "job_tokenizer",
    "plan_total_steps",
    "prepare_data",
    "prepare_job_data",
    "restore_state",
    "run_training",
    "save_checkpoint",
    "start_ray",
    "train_loop_per_worker",
    "training_tokenizer",
    "worker_cpus",
]
