"""A real Ray Tune sweep on local Ray: three ASHA trials, each a TorchTrainer run of the tiny model.

The sweep is interrupted (SIGINT, as Ctrl-C does) once a trial has checkpointed, then the same
command continues it: trials resume instead of starting over, the hopeless learning rate is
stopped early, and the best trial's config file trains as it is.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from raytune_ft.config import dump_config, load_config, with_values
from raytune_ft.tune import POINTER_FILE, run_sweep, sweep_base

pytestmark = pytest.mark.integration


class InterruptOnCheckpoint(threading.Thread):
    """Send this process SIGINT once a trial of the sweep in ``sweep_dir`` reported a checkpoint to Tune."""

    def __init__(self, sweep_dir: Path) -> None:
        super().__init__(daemon=True)
        self.sweep_dir = sweep_dir
        self.trial_dir: Path | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            found = sorted(self.sweep_dir.glob(f"run_trial_*/checkpoint_*/{POINTER_FILE}"))
            if found:
                self.trial_dir = found[0].parents[1]
                os.kill(os.getpid(), signal.SIGINT)
                return


def reported_steps(trial_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (trial_dir / "result.json").read_text().splitlines()]


def test_asha_sweep_survives_interruption_and_its_best_config_round_trips(
    local_ray_with_dashboard: None, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raytune_ft.cli import main

    cfg = load_config(None, [
        f"model.source={tiny_model_dir}", "data.dataset=identity", "data.cutoff_len=128", "data.val_size=0.2",
        "scaling.num_workers=1", "train.max_steps=8", "train.per_device_batch_size=4", "train.lr_scheduler=constant",
        "train.logging_steps=2", "train.eval_steps=2", "train.save_steps=4",
        f"train.storage_path={tmp_path}", "train.run_name=sweep",
        "tune.space={train.learning_rate: {grid: [0.01, 0.003, 1.0e-6]}}", "tune.reduction_factor=2",
    ])  # fmt: skip
    sweep_dir = tmp_path / "sweep"
    interrupter = InterruptOnCheckpoint(sweep_dir)
    interrupter.start()
    try:
        first = run_sweep(cfg)
    finally:
        interrupter.done.set()
    assert interrupter.trial_dir is not None, "no trial checkpointed, so nothing was interrupted"
    assert first.interrupted, [row.status for row in first.rows]

    # The same command again: Tune restores the sweep, each trial its own run.
    config = tmp_path / "sweep.yaml"
    config.write_text(dump_config(cfg))
    capsys.readouterr()
    assert main(["tune", str(config)]) == 0
    out = capsys.readouterr().out
    results = json.loads((sweep_dir / "results.json").read_text())
    by_lr = {trial["values"]["train.learning_rate"]: trial for trial in results["trials"]}
    assert sorted(by_lr) == [1e-6, 0.003, 0.01]
    assert by_lr[0.01]["status"] == "completed" and by_lr[0.01]["step"] == 8
    assert by_lr[1e-6]["status"] == "stopped early" and by_lr[1e-6]["step"] < 8, "ASHA stops the hopeless trial"
    assert all(trial["status"] in ("completed", "stopped early") for trial in results["trials"])
    assert results["best_trial"] == by_lr[0.01]["trial_id"]
    assert by_lr[0.01]["metric"] < by_lr[1e-6]["metric"]
    assert "stopped early" in out and f"best trial {results['best_trial']}" in out

    # The interrupted trial continued from its checkpoint: it never reported step 2 twice.
    assert reported_steps(interrupter.trial_dir).count(2) == 1, reported_steps(interrupter.trial_dir)

    best = by_lr[0.01]
    assert best["checkpoint"] == f"{sweep_dir}/trials/{best['trial_id']}/checkpoint-000008"
    assert (Path(best["checkpoint"]) / "adapter_model.safetensors").is_file()
    chosen = load_config(sweep_dir / "best_config.yaml")
    assert chosen == with_values(sweep_base(cfg), {"train.learning_rate": 0.01, "train.run_name": "sweep-best"})
    assert main(["validate", str(sweep_dir / "best_config.yaml")]) == 0
