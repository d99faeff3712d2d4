"""Trackers and evaluation on a local Ray: a tiny run logs to wandb (offline), MLflow (file store) and
TensorBoard, writes its loss curve, resumes into the same tracker runs; then ``raytune-ft eval``
scores its checkpoint with loss, generation and multiple-choice tasks on Ray Data actors."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from raytune_ft.cli import main
from raytune_ft.config import load_config
from raytune_ft.train import run_training

pytestmark = pytest.mark.integration


def logged(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(folder: Path, tag: str) -> dict[int, float]:
    """step -> value of ``tag`` from every event file (TFRecord framing read by hand; later files win)."""
    from tensorboardX.proto import event_pb2

    values: dict[int, float] = {}
    for path in sorted(folder.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.tag == tag:
                    values = {k: v for k, v in values.items() if k < event.step} | {event.step: value.simple_value}
    return values


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline ``run-*.wandb`` file (LevelDB-style log: 32 KiB blocks of chunks
    with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    found, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            found.append(wandb_internal_pb2.Record.FromString(pending))
    return found


def wandb_history(path: Path) -> dict[int, dict[str, Any]]:
    rows = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            rows[row["_step"]] = row
    return rows


@pytest.fixture(scope="module")
def tracked_run(local_ray: None, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    storage = tmp_path_factory.mktemp("saves")
    overrides = [
        f"model.source={tiny_model_dir}", "data.dataset=identity", "data.cutoff_len=128", "data.val_size=0.2",
        "scaling.num_workers=1", "train.per_device_batch_size=4", "train.learning_rate=1e-2",
        "train.logging_steps=1", "train.save_steps=3", "train.eval_steps=3", f"train.storage_path={storage}",
        "train.run_name=tracked", "tracking.backends=[wandb,mlflow,tensorboard]",
    ]  # fmt: skip
    run_training(load_config(None, [*overrides, "train.max_steps=3"]))
    run_training(load_config(None, [*overrides, "train.max_steps=5"]))  # resumes at step 4
    return storage / "tracked"


def test_trackers_hold_every_logged_metric(tracked_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = logged(tracked_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    losses = {r["step"]: r["loss"] for r in records}

    # TensorBoard: the resumed run continues the same curve.
    scalars = tensorboard_scalars(tracked_run / "tensorboard", "loss")
    assert scalars == pytest.approx(losses, rel=1e-5)
    assert set(tensorboard_scalars(tracked_run / "tensorboard", "eval_loss")) == {3, 5}
    assert set(tensorboard_scalars(tracked_run / "tensorboard", "lr")) == set(losses)

    # MLflow: one run in a local file store beside the runs, resumed rather than duplicated.
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=(tracked_run.parent / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("raytune-ft")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["tracked"]
    run_id = runs[0].info.run_id
    history = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert history == pytest.approx(losses, rel=1e-5)
    assert {m.step for m in client.get_metric_history(run_id, "tokens_per_s")} == set(losses)
    assert runs[0].data.params["train.run_name"] == "tracked" and runs[0].data.params["adapter.type"] == "lora"

    # wandb: offline (no key here); each start writes a log for the same run id (`wandb sync` joins them).
    logs = sorted((tracked_run / "wandb").glob("offline-run-*-tracked/run-tracked.wandb"))
    assert len(logs) == 2
    history = {step: row for log in logs for step, row in wandb_history(log).items()}
    assert {step: row["loss"] for step, row in history.items()} == pytest.approx(losses, rel=1e-5)
    assert {step for step, row in history.items() if "eval_loss" in row} == {3, 5}
    (run,) = [r.run for r in wandb_records(logs[0]) if r.WhichOneof("record_type") == "run"]
    config = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["train"]["run_name"] == "tracked" and config["adapter"]["type"] == "lora"


def test_loss_curve_png_is_written(tracked_run: Path) -> None:
    from PIL import Image

    with Image.open(tracked_run / "loss.png") as image:
        assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 200
        assert len(image.convert("L").getcolors(256) or []) > 10  # drawn on, not blank


def test_eval_scores_a_checkpoint_on_ray_actors(tracked_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", "eval.max_samples=8", "eval.num_workers=2", "eval.max_new_tokens=8", "eval.batch_size=4",
            "--checkpoint", str(tracked_run), "--tasks", "loss,generation,choice"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    results_file = tracked_run / "eval" / "checkpoint-000005" / "eval_results.json"
    assert f"results in {results_file}" in out
    assert "eval_loss" in out and "bleu-4" in out and "accuracy" in out
    results = json.loads(results_file.read_text())["results"]
    loss = results["loss"]
    assert loss["rows"] == 8 and loss["tokens"] > 8 and loss["perplexity"] == pytest.approx(math.exp(loss["eval_loss"]))
    generation = results["generation"]
    assert generation["rows"] == 8 and all(
        0 <= generation[k] <= 100 for k in ("bleu-4", "rouge-1", "rouge-2", "rouge-l")
    )
    predictions = (results_file.parent / "generated_predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 8 and all(json.loads(p)["label"] for p in predictions)
    choice = results["choice"]
    assert choice["rows"] == 8 and 0 <= choice["accuracy"] <= 100

    # Again: a second results file, the first untouched.
    before = results_file.read_text()
    assert main(["eval", "eval.max_samples=4", "--checkpoint", str(tracked_run)]) == 0
    assert results_file.read_text() == before
    assert json.loads((results_file.parent / "eval_results-2.json").read_text())["results"]["loss"]["rows"] == 4
