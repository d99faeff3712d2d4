"""Starting a run again resumes it, so a changed model/adapter/objective under the same name is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raytune_ft.config import ConfigError, dump_config, load_config
from raytune_ft.train import check_resume_compatible


def fake_run(tmp_path: Path, *overrides: str) -> Path:
    checkpoint = tmp_path / "run" / "checkpoint-000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "raytune_ft.yaml").write_text(dump_config(load_config(None, list(overrides))))
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3, "epoch": 0, "batches_in_epoch": 3}))
    return tmp_path / "run"


def test_same_settings_resume(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "adapter.rank=8")
    check_resume_compatible(load_config(None, ["adapter.rank=8", "train.max_steps=50"]), str(run))


def test_new_run_is_fine(tmp_path: Path) -> None:
    check_resume_compatible(load_config(None), str(tmp_path / "nothing-here"))


def test_changed_adapter_is_refused_with_the_difference(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "adapter.rank=8")
    with pytest.raises(ConfigError, match=r"adapter\.rank: 8 -> 16.*new train\.run_name"):
        check_resume_compatible(load_config(None, ["adapter.rank=16"]), str(run))


def test_changed_template_is_refused(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "data.template=chatml")
    with pytest.raises(ConfigError, match=r"data\.template: 'chatml' -> None"):
        check_resume_compatible(load_config(None), str(run))


def test_changed_strategy_is_refused_but_compile_is_free(tmp_path: Path) -> None:
    run = fake_run(tmp_path, "scaling.strategy=fsdp2")
    with pytest.raises(ConfigError, match=r"scaling\.strategy: 'fsdp2' -> 'ddp'"):
        check_resume_compatible(load_config(None), str(run))
    check_resume_compatible(load_config(None, ["scaling.strategy=fsdp2", "model.compile=true"]), str(run))
