"""Starting a run again resumes it, so a changed model/adapter/objective under the same name is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hub_cache import hf_cache_entry

from raytune_ft.config import ConfigError, dump_config, load_config
from raytune_ft.models import pin_sources
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


def test_nested_settings_compare_by_value_and_the_judge_may_move(tmp_path: Path) -> None:
    """``method.judge`` is a section inside a section: read back from the checkpoint it equals the config's;
    its endpoint may change on resume, the stage's objective may not."""
    run = fake_run(tmp_path, "method.stage=ppo", "method.kl_coef=0.1")
    check_resume_compatible(load_config(None, ["method.stage=ppo", "method.kl_coef=0.1"]), str(run))
    moved = ["method.stage=ppo", "method.kl_coef=0.1", "method.judge.base_url=http://elsewhere:8000/v1"]
    check_resume_compatible(load_config(None, moved), str(run))
    with pytest.raises(ConfigError, match=r"method\.kl_coef: 0\.1 -> 0\.2"):
        check_resume_compatible(load_config(None, ["method.stage=ppo"]), str(run))


def test_a_restart_keeps_the_hub_revision_its_checkpoints_hold(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run trained on ``main`` at commit OLD; ``main`` has moved to NEW since. Started again, it resumes on OLD
    (and says so) where the config names no commit; a config naming another commit or repository is refused."""
    repo, old, new, cache = "tiny-org/tiny-llama", "a" * 40, "b" * 40, tmp_path / "hf"
    hf_cache_entry(cache, repo, tiny_model_dir, commit=old)
    run = fake_run(tmp_path, f"model.source={repo}@{old}", f"model.cache_dir={cache}")
    saved = load_config(run / "checkpoint-000003" / "raytune_ft.yaml")
    hf_cache_entry(cache, repo, tiny_model_dir, commit=new)  # refs/main -> NEW

    for source in (repo, f"{repo}@main"):
        cfg = pin_sources(load_config(None, [f"model.source={source}", f"model.cache_dir={cache}"]), resumed=saved)
        assert cfg.model.source == f"{repo}@{old}"
        check_resume_compatible(cfg, str(run))
        assert f"model.source {source}: resuming on {repo}@{old}" in capsys.readouterr().err
    fresh = pin_sources(load_config(None, [f"model.source={repo}", f"model.cache_dir={cache}"]))
    assert fresh.model.source == f"{repo}@{new}"  # a new run takes the branch as it is now
    for source in (f"{repo}@{new}", f"other-org/tiny-llama@{new}"):
        cfg = pin_sources(load_config(None, [f"model.source={source}", f"model.cache_dir={cache}"]), resumed=saved)
        with pytest.raises(ConfigError, match=rf"model\.source: '{repo}@{old}' -> '{source}'"):
            check_resume_compatible(cfg, str(run))
