"""``raytune-ft eval``: loss/perplexity, generation metrics and multiple-choice accuracy of one model.

Rows are read, rendered and tokenized by the training data pipeline (so a checkpoint is scored on
exactly what it learned from), then streamed through scorer actors on Ray Data. Results are one
JSON file and a printed table; an existing results file is never overwritten.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raytune_ft.config import InputError, JobConfig, ModelConfig, load_config
from raytune_ft.data import DataError, build_datasets
from raytune_ft.models import (
    CONFIG_FILE,
    CheckpointError,
    inference_model,
    is_adapter_checkpoint,
    latest_checkpoint,
    load_row_tokenizer,
    pin_sources,
    trained_base,
)

from .metrics import generation_scores
from .scorers import GENERATORS, LETTERS, ChoiceScorer, EvalModel, LossScorer

__all__ = [
    "BUILTIN_CHOICE_SETS",
    "TASKS",
    "EvalReport",
    "EvalTarget",
    "eval_target",
    "format_report",
    "read_choice_file",
    "run_evaluation",
]

BUILTIN_CHOICE_SETS = {"mc_basic": Path(__file__).parents[1] / "data" / "builtin" / "mc_basic.jsonl"}
RESULTS = "eval_results"


@dataclass(frozen=True)
class EvalTarget:
    model: EvalModel
    tokenizer: ModelConfig
    """The model (pinned) whose tokenizer and chat template render the rows, resolved by each tokenizing actor
    on its own node; its ``trust_remote_code`` says whether the tokenizer's own code may run."""
    label: str
    """How the model is named in the results."""
    output_dir: Path
    """Default results folder."""
    adapter: str | None = None
    """An adapter (a folder or a pinned Hub id) whose own tokenizer, when it has one, renders the rows instead."""


@dataclass
class EvalReport:
    results: dict[str, dict[str, Any]]
    path: Path


def eval_target(checkpoint: str | None, model: str | None, config: JobConfig | None = None) -> EvalTarget:
    """What ``--checkpoint`` (a run or one checkpoint) and/or ``--model`` (a model source) name; without
    either, ``config``'s model with its ``adapter.init_from`` adapters (LLaMA-Factory's predict YAML).
    ``config``'s ``model`` section (code trust, Hub cache) applies to the models it names."""
    if checkpoint is None:
        return _config_target(model, config)
    found = latest_checkpoint(checkpoint)
    output = found.parent / "eval" / found.name
    if is_adapter_checkpoint(found):
        base, _ = trained_base(found, model, config)  # pinned here once: every actor loads the same revision
        return EvalTarget(EvalModel(base.source, str(found), config), base, str(found), output, adapter=str(found))
    if model is not None:
        raise CheckpointError(f"{found} holds full weights; give --checkpoint or --model, not both")
    given = config.model if config is not None else ModelConfig()
    saved = load_config(found / CONFIG_FILE).model if (found / CONFIG_FILE).is_file() else given
    trust = given.trust_remote_code or saved.trust_remote_code
    weights = inference_model(given.model_copy(update={"trust_remote_code": trust}), str(found))
    return EvalTarget(EvalModel(str(found), None, config), weights, str(found), output)


def _config_target(model: str | None, config: JobConfig | None) -> EvalTarget:
    if model is None and config is None:
        raise InputError("eval: give --checkpoint RUN_DIR or --model SOURCE")
    job = config or JobConfig()
    if model is not None:
        job = job.model_copy(update={"model": job.model.model_copy(update={"source": model})})
    job = pin_sources(job)  # every scoring actor loads the same Hub commit
    output = Path("eval_results").resolve()
    if job.adapter.init_from:
        last = job.adapter.init_from[-1]
        label = f"{job.model.source} + {', '.join(job.adapter.init_from)}"
        return EvalTarget(EvalModel(None, None, job), job.model, label, output, adapter=last)
    return EvalTarget(EvalModel(job.model.source, None, job), job.model, model or job.model.source, output)


def run_evaluation(
    cfg: JobConfig, target: EvalTarget, output_dir: str | None = None, log: Callable[[str], None] = print
) -> EvalReport:
    """Every task of ``cfg.eval.tasks`` on a started Ray; results written under ``output_dir``."""
    results: dict[str, dict[str, Any]] = {}
    for task in cfg.eval.tasks:
        log(f"raytune_ft: eval {task} on {target.label} ...")
        results[task] = TASKS[task](cfg, target)
    folder = Path(output_dir or cfg.eval.output_dir or target.output_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    predictions = results.get("generation", {}).pop("predictions", None)
    path = _fresh(folder, RESULTS, ".json")
    report = {"model": target.label, "results": results, "eval": cfg.eval.model_dump(mode="json")}
    path.write_text(json.dumps(report, indent=2) + "\n")
    if predictions is not None:
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
        _fresh(folder, "generated_predictions", ".jsonl").write_text(lines, encoding="utf-8")
    return EvalReport(results, path)


def _fresh(folder: Path, stem: str, suffix: str) -> Path:
    """``stem.suffix``, or ``stem-2.suffix``, ``stem-3.suffix``... : never an existing file."""
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def _rows(cfg: JobConfig, target: EvalTarget) -> Any:
    """The evaluation dataset tokenized as training does (answers learned, prompts masked), in order."""
    names = cfg.eval.dataset or cfg.data.eval_dataset or cfg.data.dataset
    data = cfg.data.model_copy(
        update={
            "dataset": names,
            "eval_dataset": None,
            "val_size": 0.0,
            "packing": False,
            "shuffle": False,
            "max_samples": cfg.eval.max_samples,
        }
    )
    load = functools.partial(load_row_tokenizer, target.tokenizer, target.adapter)  # resolved on each actor's node
    # Tokenized in full before the scorers start: actors holding every CPU would leave none to tokenize.
    return build_datasets(data, load, seed=cfg.train.seed, concurrency=1, stage="sft").train.materialize()


def _scored(rows: Any, scorer: type, cfg: JobConfig, **kwargs: Any) -> list[dict[str, Any]]:
    env = {"VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_KVCACHE_SPACE": f"{cfg.eval.kv_cache_gib:g}"}
    if "HF_HUB_OFFLINE" in os.environ:  # else the node decides: one without the pinned Hub model fetches it
        env["HF_HUB_OFFLINE"] = os.environ["HF_HUB_OFFLINE"]
    mapped = rows.map_batches(
        scorer,
        fn_constructor_kwargs=kwargs,
        batch_size=cfg.eval.batch_size,
        batch_format="numpy",
        concurrency=cfg.eval.num_workers,
        num_cpus=cfg.eval.cpus_per_worker,
        runtime_env={"env_vars": env},
    )
    return list(mapped.take_all())


def _loss(cfg: JobConfig, target: EvalTarget) -> dict[str, Any]:
    scored = _scored(_rows(cfg, target), LossScorer, cfg, model=target.model)
    tokens = sum(int(r["tokens"]) for r in scored)
    if not tokens:
        raise DataError("eval loss: no answer tokens in the evaluation rows")
    loss = sum(float(r["loss_sum"]) for r in scored) / tokens
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "rows": len(scored), "tokens": tokens}


def _generation(cfg: JobConfig, target: EvalTarget) -> dict[str, Any]:
    settings = {"max_new_tokens": cfg.eval.max_new_tokens, "temperature": cfg.eval.temperature}
    scored = _scored(_rows(cfg, target), GENERATORS[cfg.eval.engine], cfg, model=target.model, **settings)
    predictions = [str(r["prediction"]) for r in scored]
    references = [str(r["reference"]) for r in scored]
    rows = [{"prompt": str(r["prompt"]), "predict": str(r["prediction"]), "label": str(r["reference"])} for r in scored]
    return {
        **generation_scores(predictions, references),
        "rows": len(scored),
        "engine": ", ".join(sorted({str(r["engine"]) for r in scored})),
        "predictions": rows,
    }


def _choice(cfg: JobConfig, target: EvalTarget) -> dict[str, Any]:
    import ray.data

    rows = read_choice_file(cfg.eval.choice_file)[: cfg.eval.max_samples]
    scored = _scored(ray.data.from_items(rows), ChoiceScorer, cfg, model=target.model)
    by_subject: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for row in scored:
        by_subject[str(row["subject"])] += 1
        right[str(row["subject"])] += bool(row["correct"])
    correct = sum(right.values())
    return {
        "accuracy": 100.0 * correct / len(scored),
        "rows": len(scored),
        "by_subject": {s: 100.0 * right[s] / n for s, n in sorted(by_subject.items())},
    }


TASKS: dict[str, Callable[[JobConfig, EvalTarget], dict[str, Any]]] = {
    "loss": _loss,
    "generation": _generation,
    "choice": _choice,
}


def read_choice_file(name: str) -> list[dict[str, Any]]:
    """Rows ``{question, choices, answer (letter), subject}`` from an MMLU-style file, each checked."""
    path = BUILTIN_CHOICE_SETS.get(name.removeprefix("builtin:")) if name.startswith("builtin:") else Path(name)
    if path is None or not path.is_file():
        known = ", ".join(f"builtin:{n}" for n in BUILTIN_CHOICE_SETS)
        raise DataError(f"eval.choice_file {name!r}: no such file (bundled sets: {known})")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            raw = list(csv.DictReader(f))
    elif path.suffix == ".json":
        raw = json.loads(path.read_text(encoding="utf-8"))
    else:
        raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [_choice_row(row, path, i + 1) for i, row in enumerate(raw)]
    if not rows:
        raise DataError(f"{path}: no questions in it")
    return rows


def _choice_row(row: dict[str, Any], path: Path, number: int) -> dict[str, Any]:
    where = f"{path} row {number}"
    choices = row.get("choices") or [row[k] for k in LETTERS if k in row]
    if not row.get("question") or not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
        raise DataError(f"{where}: needs 'question' and 2-10 'choices' (a list, or columns A, B, C, D ...)")
    answer = row.get("answer")
    if isinstance(answer, int) or (isinstance(answer, str) and answer.isdigit()):
        answer = LETTERS[int(answer)] if int(answer) < len(choices) else None
    elif isinstance(answer, str):
        answer = answer.strip().upper()
    if not isinstance(answer, str) or answer not in LETTERS[: len(choices)]:
        raise DataError(f"{where}: 'answer' must be a choice letter (A-{LETTERS[len(choices) - 1]}) or index")
    return {"question": str(row["question"]), "choices": [str(c) for c in choices], "answer": answer,
            "subject": str(row.get("subject", "all"))}  # fmt: skip


def format_report(report: EvalReport) -> str:
    """The results as an aligned table: task, metric, value."""
    lines = [("task", "metric", "value")]
    for task, metrics in report.results.items():
        for key, value in metrics.items():
            if isinstance(value, float):
                lines.append((task, key, f"{value:.4f}"))
            elif isinstance(value, int | str):
                lines.append((task, key, str(value)))
            elif isinstance(value, dict):
                lines += [(task, f"{key}.{k}", f"{v:.2f}") for k, v in value.items()]
    widths = [max(len(row[i]) for row in lines) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in lines)
