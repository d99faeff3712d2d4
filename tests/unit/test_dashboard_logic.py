"""The control panel's logic without a browser: the form goes through the loader and splits its
errors per key, saved YAML runs as it was edited and never overwrites by accident, run folders are
read as they grow, job commands are checked before they are submitted, both languages label
everything, and ``raytune-ft dashboard --help`` explains itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raytune_ft.config import ConfigError, InputError, load_config
from raytune_ft.dashboard.forms import (
    FORM_KEYS,
    choices,
    errors_by_key,
    field_info,
    form_values,
    parse_value,
    save_config,
    show_value,
    updated_config,
)
from raytune_ft.dashboard.i18n import LANGUAGES, TEXT
from raytune_ft.dashboard.jobs import command_args, run_dir_of
from raytune_ft.dashboard.runs import find_runs, find_sweeps, list_checkpoints, read_metrics, read_sweep, run_config
from raytune_ft.tune.results import TrialRow, write_results

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"


def test_every_form_key_is_a_documented_field_and_round_trips_through_the_form() -> None:
    cfg = load_config(QUICKSTART)
    values = form_values(cfg)
    assert list(values) == [key for keys in FORM_KEYS.values() for key in keys]
    assert all(field_info(key).description for key in values), "each widget's help is the field's docstring"
    assert choices("scaling.strategy") is not None and "ddp" in choices("scaling.strategy")  # type: ignore[operator]
    assert choices("train.learning_rate") is None
    as_text = {k: v if isinstance(v, bool) or k == "data.dataset" or choices(k) else parse_value(show_value(v))
               for k, v in values.items()}  # fmt: skip
    assert updated_config(cfg, as_text) == cfg


def test_form_errors_come_from_the_loader_and_land_under_their_keys() -> None:
    cfg = load_config(QUICKSTART)
    with pytest.raises(ConfigError) as caught:
        updated_config(cfg, {"train.learning_rate": -1.0, "adapter.rank": "many"})
    errors = errors_by_key(caught.value)
    assert set(errors) >= {"train.learning_rate", "adapter.rank"}
    assert "greater than 0" in errors["train.learning_rate"]
    assert parse_value("") is None and parse_value("[q_proj, v_proj]") == ["q_proj", "v_proj"]


def test_saved_yaml_loads_back_equal_and_is_never_overwritten_silently(tmp_path: Path) -> None:
    cfg = updated_config(load_config(QUICKSTART), {"train.learning_rate": 3e-4, "adapter.rank": 16})
    target = save_config(cfg, tmp_path / "sub" / "mine.yaml")
    assert load_config(target) == cfg
    before = target.read_text()
    other = updated_config(cfg, {"adapter.rank": 4})
    with pytest.raises(InputError, match="exists; tick 'overwrite'"):
        save_config(other, target)
    assert target.read_text() == before
    assert load_config(save_config(other, target, overwrite=True)).adapter.rank == 4
    with pytest.raises(InputError, match=r"ends in \.yaml"):
        save_config(cfg, tmp_path / "mine.txt")


def test_metrics_are_read_as_they_grow_and_checkpoints_newest_first(tmp_path: Path) -> None:
    run = tmp_path / "saves" / "r1"
    run.mkdir(parents=True)
    assert read_metrics(run) == [] and find_runs(tmp_path / "saves") == []
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["loss"] for r in read_metrics(run)] == [2.0, 1.5]  # the line being written waits
    for step in (2, 10):
        folder = run / f"checkpoint-{step:06d}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert [c.step for c in list_checkpoints(run)] == [10, 2]
    assert run_config(run) == run / "checkpoint-000010" / "raytune_ft.yaml"
    assert find_runs(tmp_path / "saves") == [run]


def test_a_sweep_is_read_with_its_best_trial_and_drawn_keys(tmp_path: Path) -> None:
    rows = [
        TrialRow("t1", "completed", {"train.learning_rate": 1e-4}, 8, 8, 1.2, 1.1, None, None),
        TrialRow("t2", "stopped early", {"train.learning_rate": 1e-3}, 4, 8, 0.9, 0.8, None, None),
    ]
    write_results(tmp_path, rows, rows[1], load_config(QUICKSTART), "best", "eval_loss")
    assert find_sweeps(tmp_path) == [tmp_path]
    sweep = read_sweep(tmp_path)
    assert (sweep.metric, sweep.best_trial, sweep.keys) == ("eval_loss", "t2", ["train.learning_rate"])
    assert sweep.trials[1]["train.learning_rate"] == 1e-3 and sweep.trials[1]["metric"] == 0.9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", None, []), "choose a config YAML"),
        (("export", None, [], "saves/r1"), "give the destination folder"),
        (("eval", "c.yaml", []), "choose a run or checkpoint"),
        (("serve", None, []), "choose a config YAML or a run"),
        (("fly", "c.yaml", []), "unknown action 'fly'"),
    ],
)
def test_job_commands_are_checked_before_submitting(args: tuple, message: str) -> None:
    with pytest.raises(InputError, match=message):
        command_args(*args)


def test_job_commands_are_the_cli_arguments_and_know_their_run_folder(tmp_path: Path) -> None:
    assert command_args("train", "c.yaml", ["train.max_steps=5"]) == ["train", "c.yaml", "train.max_steps=5"]
    assert command_args("export", None, [], "saves/r1", "out") == ["export", "--checkpoint", "saves/r1", "--out", "out"]
    (tmp_path / "c.yaml").write_text("train: {run_name: r7, storage_path: ./runs}\n")
    assert run_dir_of("c.yaml", [], tmp_path) == str(tmp_path / "runs" / "r7")
    assert run_dir_of("c.yaml", ["train.run_name=r8"], tmp_path) == str(tmp_path / "runs" / "r8")
    assert run_dir_of("missing.yaml", [], tmp_path) is None


def test_both_languages_label_every_key() -> None:
    assert set(LANGUAGES) == set(TEXT)
    assert set(TEXT["zh"]) == set(TEXT["en"])
    assert all(TEXT["zh"][key] and TEXT["zh"][key] != TEXT["en"][key] for key in ("nav.configure", "launch.submit"))
    assert {f"section.{name}" for name in FORM_KEYS} <= set(TEXT["en"])


def test_dashboard_help_explains_address_and_port() -> None:
    done = subprocess.run([sys.executable, "-m", "raytune_ft.cli", "dashboard", "--help"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "--port" in done.stdout and "--address" in done.stdout and "127.0.0.1" in done.stdout


def test_the_dataset_picker_lists_bundled_and_registered_sets(tmp_path: Path) -> None:
    from raytune_ft.data import BUILTIN_DATASETS, dataset_names

    assert dataset_names(None) == list(BUILTIN_DATASETS)
    (tmp_path / "mine.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n')
    (tmp_path / "dataset_info.json").write_text(json.dumps({"zeta": {"file_name": "mine.jsonl"},
                                                            "alpha": {"file_name": "mine.jsonl"}}))  # fmt: skip
    assert dataset_names(tmp_path) == [*BUILTIN_DATASETS, "alpha", "zeta"]
