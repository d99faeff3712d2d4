"""Each page of the control panel run by ``streamlit.testing``'s AppTest (the real Streamlit script
runner, no browser): Configure loads, validates inline, previews and saves; Monitor draws a run's
curves and checkpoints; Sweeps highlights the best trial; Export merges a real checkpoint; Chat
explains a missing endpoint. Launch and Chat against live services are in the integration tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from raytune_ft.config import load_config
from raytune_ft.tune.results import TrialRow, write_results

REPO = Path(__file__).parents[2]
UNREACHABLE = "http://127.0.0.1:9"
"""A Jobs API / endpoint address nothing answers (port 9, discard), for pages that must say so."""


def page(name: str, **state: Any) -> AppTest:
    """The page ``name`` as its own script, with session settings preset as the sidebar would."""
    app = AppTest.from_string(f"from raytune_ft.dashboard.views import {name}\n{name}.render()\n",
                              default_timeout=120)  # fmt: skip
    for key, value in state.items():
        app.session_state[key] = value
    return app.run()


def labelled(widgets: Any, label: str) -> Any:
    return next(w for w in widgets if w.label == label)


def texts(elements: Any) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.fixture()
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # Configure starts from configs/quickstart.yaml, as `raytune-ft dashboard` in the repo


def test_configure_loads_the_quickstart_and_shows_errors_under_the_field(in_repo: None) -> None:
    app = page("configure")
    assert not app.exception
    assert app.text_input(key="form:train.learning_rate").value == str(load_config("configs/quickstart.yaml")
                                                                         .train.learning_rate)  # fmt: skip
    assert "Valid config" in texts(app.success)
    app.text_input(key="form:train.learning_rate").set_value("-1").run()
    assert "The form has problems" in texts(app.error)
    assert any(e.value.startswith("train.learning_rate: ") and "greater than 0" in e.value for e in app.error)
    assert not [b for b in app.button if b.label == "Save YAML"], "an invalid form cannot be saved"
    app.text_input(key="form:train.learning_rate").set_value("2e-4").run()
    assert not app.error


def test_configure_saves_yaml_the_cli_loads_and_refuses_to_overwrite(in_repo: None, tmp_path: Path) -> None:
    app = page("configure")
    app.text_input(key="form:adapter.rank").set_value("16").run()
    app.selectbox(key="form:scaling.strategy").set_value("fsdp2").run()
    target = tmp_path / "mine.yaml"
    app.text_input(key="cfg_save_path").set_value(str(target)).run()
    labelled(app.button, "Save YAML").click().run()
    saved = load_config(target)
    assert (saved.adapter.rank, saved.scaling.strategy) == (16, "fsdp2")
    assert saved.model == load_config("configs/quickstart.yaml").model
    before = target.read_text()
    app.text_input(key="form:adapter.rank").set_value("4").run()
    labelled(app.button, "Save YAML").click().run()
    assert "exists; tick 'overwrite'" in texts(app.error) and target.read_text() == before
    app.checkbox(key="cfg_overwrite").check().run()
    labelled(app.button, "Save YAML").click().run()
    assert load_config(target).adapter.rank == 4


def test_configure_previews_rendered_samples_with_learned_spans(in_repo: None, builtin_dir: Path) -> None:
    app = page("configure")
    labelled(app.button, "Preview rendered samples").click().run()
    assert not app.exception and not app.error
    shown = [c.value for c in app.code if "⟦" in c.value]
    assert len(shown) == 3 and all("⟧" in text for text in shown)
    assert "identity" in texts(app.caption)


def test_configure_speaks_chinese(in_repo: None) -> None:
    app = page("configure", lang="zh")
    assert app.title[0].value == "配置"
    assert "配置有效" in texts(app.success) and labelled(app.button, "保存 YAML")


def test_monitor_plots_every_curve_and_lists_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "saves" / "r1"
    checkpoint = run / "checkpoint-000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    lines = [{"step": s, "loss": 3.0 - s / 4, "lr": 1e-4, "tokens_per_s": 100.0 + s} for s in range(1, 5)]
    lines.append({"step": 4, "eval_loss": 2.2})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    app = page("monitor", runs_root=str(tmp_path / "saves"), ray_address=UNREACHABLE)
    assert not app.exception
    captions = texts(app.caption)
    for expected in ("loss: 4 points, last 2", "eval_loss: 1 points, last 2.2", "lr: 4 points",
                     "tokens_per_s: 4 points, last 104"):  # fmt: skip
        assert expected in captions
    assert len(app.get("vega_lite_chart")) == 4
    assert list(app.dataframe[0].value["step"]) == [4]
    assert f"no Ray State API at {UNREACHABLE}" in texts(app.error), "an unreachable cluster is reported"


def test_monitor_plots_an_online_run_s_reward(tmp_path: Path) -> None:
    run = tmp_path / "saves" / "grpo"
    run.mkdir(parents=True)
    lines = [{"step": s, "loss": 0.0, "lr": 1e-4, "tokens_per_s": 90.0, "reward": 0.1 * s, "response_length": 80.0,
              "rollout/tokens_per_s": 200.0} for s in range(1, 4)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    app = page("monitor", runs_root=str(tmp_path / "saves"), ray_address=UNREACHABLE)
    assert not app.exception
    assert "reward: 3 points, last 0.3" in texts(app.caption)
    assert len(app.get("vega_lite_chart")) == 6


def test_monitor_says_where_to_start_without_runs(tmp_path: Path) -> None:
    app = page("monitor", runs_root=str(tmp_path), ray_address=UNREACHABLE)
    assert "submit a train job on the Launch page" in texts(app.info)


def test_sweeps_table_highlights_the_best_trial(tmp_path: Path) -> None:
    rows = [
        TrialRow("t1", "completed", {"train.learning_rate": 1e-4, "adapter.rank": 8}, 8, 8, 1.2, 1.1, None, None),
        TrialRow("t2", "stopped early", {"train.learning_rate": 1e-3, "adapter.rank": 16}, 4, 8, 0.9, 0.8, None, None),
        TrialRow("t3", "error", {"train.learning_rate": 1e-2, "adapter.rank": 8}, None, 8, None, None, None, None),
    ]
    folder = tmp_path / "sweep"
    folder.mkdir()
    write_results(folder, rows, rows[1], load_config(None), "best", "eval_loss")
    app = page("sweeps", runs_root=str(tmp_path))
    assert not app.exception
    assert "Best trial: t2: eval_loss 0.9 (adapter.rank=16, train.learning_rate=0.001)" in texts(app.success)
    table = app.dataframe[0].value
    assert list(table["trial_id"]) == ["t1", "t2", "t3"] and "eval_loss" in table
    assert len(app.get("vega_lite_chart")) == 2, "one scatter per swept key"


def test_export_merges_a_checkpoint_and_shows_the_path(
    tmp_path: Path, tiny_model_dir: Path, adapter_checkpoint: Any
) -> None:
    adapter_checkpoint(tiny_model_dir, tmp_path / "saves" / "demo", 2, seed=1, source=str(tiny_model_dir))
    app = page("export", runs_root=str(tmp_path / "saves"))
    out = tmp_path / "merged"
    labelled(app.text_input, "Destination folder").set_value(str(out)).run()
    labelled(app.button, "Merge and export").click().run()
    assert not app.exception and not app.error
    assert str(out) in texts(app.success)
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert not (out / "adapter_config.json").exists(), "the adapter is merged into the weights"
    labelled(app.button, "Merge and export").click().run()
    assert "the folder is not empty" in texts(app.error), "an existing export is not replaced without 'overwrite'"


def test_chat_explains_a_missing_endpoint() -> None:
    app = page("chat", endpoint=f"{UNREACHABLE}/v1")
    assert f"No endpoint answers at {UNREACHABLE}/v1" in texts(app.error)
    assert "raytune-ft serve" in texts(app.info)
