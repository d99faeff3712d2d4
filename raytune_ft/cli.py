"""``raytune-ft``: the command line over every stage (train, tune, serve, export, eval, validate, data preview,
chat) and the control panel (dashboard).

Each subcommand parses its arguments, loads config through the one loader, and calls a single
library function; errors raised for bad input are printed as one readable message, no traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from raytune_ft.config import InputError, ModelConfig, dump_config, llamafactory_translation, load_config

__all__ = ["main"]

_EPILOG = """examples:
  raytune-ft train configs/quickstart.yaml
  raytune-ft train configs/quickstart.yaml train.max_steps=10 scaling.num_workers=1
  ray job submit --working-dir . -- raytune-ft train configs/quickstart.yaml
  raytune-ft tune configs/tune_lora.yaml
  raytune-ft data preview configs/quickstart.yaml -n 2
  raytune-ft chat --adapter saves/quickstart --prompt "Who are you?"
  raytune-ft serve --checkpoint saves/quickstart
  raytune-ft serve configs/serve.yaml serve.port=8001
  raytune-ft export --checkpoint saves/quickstart --out exports/quickstart
  raytune-ft eval --checkpoint saves/quickstart --tasks loss,generation,choice
  raytune-ft export --checkpoint saves/quickstart --out exports/quickstart-gguf --format gguf --gguf-type q8_0
  raytune-ft dashboard
"""


def _train(args: argparse.Namespace) -> int:
    from raytune_ft.train import run_training

    cfg = load_config(args.config, args.overrides)
    outcome = run_training(cfg, address=args.address)
    print(f"raytune_ft: run {cfg.train.run_name}: {outcome.total_steps} steps; checkpoints in {outcome.run_dir}")
    if outcome.checkpoint:
        print(f"raytune_ft: newest checkpoint {outcome.checkpoint}")
        flag = "--adapter" if cfg.adapter.type == "lora" else "--model"
        print(f'raytune_ft: try it: raytune-ft chat {flag} {outcome.run_dir} --prompt "Hello"')
    return 0


def _tune(args: argparse.Namespace) -> int:
    from raytune_ft.tune import format_table, run_sweep

    cfg = load_config(args.config, args.overrides)
    outcome = run_sweep(cfg, address=args.address)
    best, files = outcome.best, outcome.files
    print(format_table(outcome.rows, cfg.tune.metric, best))
    print(f"raytune_ft: results in {files.csv} and {files.json}")
    if best is None or files.best_config is None:
        print(f"raytune_ft: no trial reported {cfg.tune.metric} yet; nothing to rank")
    else:
        drawn = ", ".join(f"{key}={value}" for key, value in best.values.items())
        print(f"raytune_ft: best trial {best.trial_id}: {cfg.tune.metric} {best.metric:.4f} with {drawn}")
        print(f"raytune_ft: best checkpoint {best.checkpoint}")
        print(f"raytune_ft: best config {files.best_config}; train it: raytune-ft train {files.best_config}")
    if outcome.interrupted:
        unfinished = sum(row.status == "unfinished" for row in outcome.rows)
        print(f"raytune_ft: sweep interrupted ({unfinished} trial(s) unfinished, {outcome.unstarted} not started): "
              "run the same command again to continue it", file=sys.stderr)  # fmt: skip
        return 130
    return 0 if best is not None else 1


def _serve(args: argparse.Namespace) -> int:
    from raytune_ft.serve import load_plan, run_server

    config, overrides = _split_config(args.config, args.overrides)
    run_server(load_plan(config, args.checkpoint, overrides), address=args.address)
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raytune_ft.export import export_checkpoint
    from raytune_ft.models import CONFIG_FILE, latest_checkpoint

    config, overrides = _split_config(args.config, args.overrides)
    flags = {"export.format": args.format, "export.gguf_type": args.gguf_type}
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    checkpoint = latest_checkpoint(args.checkpoint)
    cfg = load_config(config or checkpoint / CONFIG_FILE, overrides).export
    out = args.out or cfg.out_dir
    if out is None:
        raise InputError("export: give the destination folder with --out DIR (or export.out_dir in the config)")
    target = export_checkpoint(checkpoint, Path(out), cfg, overwrite=args.overwrite, base=args.base)
    print(f"raytune_ft: exported {checkpoint} ({cfg.format}) to {target}")
    if cfg.format == "hf":
        print(f'raytune_ft: try it: raytune-ft chat --model {target} --prompt "Hello"')
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    import importlib.util
    import os
    import subprocess

    from raytune_ft.dashboard import APP_FILE
    from raytune_ft.dashboard.common import ADDRESS_ENV

    if importlib.util.find_spec("streamlit") is None:
        raise InputError("the dashboard needs Streamlit: pip install 'raytune-ft[dashboard]'")
    env = {**os.environ, **({ADDRESS_ENV: args.address} if args.address else {})}
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP_FILE), "--server.address", args.host,
        "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
    ]  # fmt: skip
    print(f"raytune_ft: control panel on http://{args.host}:{args.port} (Ctrl-C stops it and its local Ray)")
    return subprocess.call(command, env=env)


def _split_config(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """(config, overrides) when the optional CONFIG may have been an override itself."""
    from pathlib import Path

    if config is not None and "=" in config and not Path(config).is_file():  # only overrides were given
        return None, [config, *overrides]
    return config, list(overrides)


def _eval(args: argparse.Namespace) -> int:
    from raytune_ft.evaluate import eval_target, format_report, run_evaluation
    from raytune_ft.models import CONFIG_FILE, latest_checkpoint
    from raytune_ft.train import start_ray

    config, overrides = _split_config(args.config, args.overrides)
    if args.tasks:
        overrides.append(f"eval.tasks={args.tasks}")
    target = eval_target(args.checkpoint, args.model)
    if config is None and args.checkpoint is not None:
        config = str(latest_checkpoint(args.checkpoint) / CONFIG_FILE)
    cfg = load_config(config, overrides)
    start_ray(args.address)
    report = run_evaluation(cfg, target, output_dir=args.out)
    print(format_report(report))
    print(f"raytune_ft: results in {report.path}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from raytune_ft.data import resolve_datasets
    from raytune_ft.data.templates import check_template_name

    cfg = load_config(args.config, args.overrides)
    resolve_datasets(cfg.data.dataset, cfg.data.dataset_dir)
    if cfg.data.eval_dataset:
        resolve_datasets(cfg.data.eval_dataset, cfg.data.dataset_dir)
    if cfg.data.template is not None:
        check_template_name(cfg.data.template)
    print(f"{args.config}: valid")
    if args.explain:
        translation = llamafactory_translation(args.config)
        if translation is not None:
            print("# translated from LLaMA-Factory keys:")
            print("\n".join(f"#   {line}" for line in translation.mapped))
        print(dump_config(cfg), end="")
    return 0


def _data_preview(args: argparse.Namespace) -> int:
    import functools

    from raytune_ft.data.preview import build_preview, format_preview
    from raytune_ft.models import load_row_tokenizer
    from raytune_ft.train import job_tokenizer, start_ray

    cfg = load_config(args.config, args.overrides)
    tokenizer = job_tokenizer(cfg)  # fails fast on a missing model or template, before Ray starts
    load = functools.partial(load_row_tokenizer, cfg.model.source)
    start_ray(args.address)
    concurrency = cfg.data.tokenize_concurrency or 1
    report = build_preview(cfg.data, load, concurrency, samples=args.samples, stage=cfg.method.rows)
    print(format_preview(report, tokenizer, cfg.data, cfg.train.per_device_batch_size))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from raytune_ft.models import load_for_inference
    from raytune_ft.serve import generate_reply, interactive_chat

    hf_logging.disable_progress_bar()

    model, tokenizer = load_for_inference(args.model, args.adapter)
    if args.prompt is None:
        interactive_chat(model, tokenizer, args.system, args.max_new_tokens, args.temperature)
        return 0
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    generate_reply(model, tokenizer, messages, args.max_new_tokens, args.temperature, on_text=_print_piece)
    print()
    return 0


def _print_piece(text: str) -> None:
    print(text, end="", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raytune-ft",
        description="Fine-tune and chat with LLMs on Ray: the same YAML on a laptop or a cluster.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="fine-tune a model as described by a YAML config",
        description="Fine-tune on Ray Train. Re-running a run_name resumes it.",
    )
    _config_args(train)
    _address_arg(train)
    train.set_defaults(func=_train)

    tune = sub.add_parser(
        "tune",
        help="sweep hyperparameters with Ray Tune: every trial a distributed training run",
        description="Runs the sweep in the config's tune: section (search space over dotted keys, ASHA/PBT/FIFO) "
        "on Ray Tune. The data is tokenized once for all trials. Results go to "
        "train.storage_path/train.run_name (results.csv, results.json, best_config.yaml); re-running the "
        "same command continues an interrupted sweep.",
    )
    _config_args(tune)
    _address_arg(tune)
    tune.set_defaults(func=_tune)

    serve = sub.add_parser(
        "serve",
        help="serve a model, export or run on an OpenAI-compatible endpoint (Ray Serve + vLLM)",
        description="Starts vLLM replicas on Ray Serve behind /v1/models, /v1/chat/completions, /v1/completions "
        "(streaming too) and /health, on serve.host:serve.port (default 127.0.0.1:8000), until Ctrl-C. "
        "LoRA adapters are requested as model BASE:RUN (newest checkpoint) or BASE:RUN:STEP; checkpoints "
        "written after the start are servable at once. With --checkpoint and no CONFIG, the run's own "
        "config supplies the serve settings.",
    )
    _checkpoint_config_args(serve, "serve", "serve.port=8001 serve.num_replicas=2")
    _address_arg(serve)
    serve.set_defaults(func=_serve)

    export = sub.add_parser(
        "export",
        help="merge a checkpoint's adapter into its base and save it (Hugging Face safetensors or GGUF)",
        description="Merges the newest checkpoint of a run (or one checkpoint) into a standalone model: "
        "Hugging Face safetensors sharded at export.max_shard_size with the tokenizer and chat template "
        "(loads in transformers, vLLM and raytune-ft serve), or one GGUF file (f16 or q8_0) for llama.cpp. "
        "The export settings come from CONFIG, else from the checkpoint's own config. A non-empty --out is "
        "refused unless --overwrite is given; it is replaced only once the new export is complete.",
    )
    _checkpoint_config_args(export, "export", "export.dtype=bfloat16", required=True)
    export.add_argument("--out", help="destination folder (default: export.out_dir)")
    export.add_argument("--format", choices=["hf", "gguf"], help="export.format (default hf)")
    export.add_argument("--gguf-type", choices=["f16", "q8_0"], help="export.gguf_type (default f16)")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out once the export is done")
    export.add_argument("--base", help="base model source for an adapter (default: the one it was trained on)")
    export.set_defaults(func=_export)

    evaluate = sub.add_parser(
        "eval",
        help="score a model or checkpoint: loss/perplexity, BLEU/ROUGE of its answers, multiple-choice accuracy",
        description="Runs eval.tasks (default loss) on Ray: rows are tokenized by the training data pipeline "
        "and scored by eval.num_workers actors. loss: token loss and perplexity on eval.dataset (default "
        "data.eval_dataset, else data.dataset). generation: BLEU-4, ROUGE-1/2/L of generated answers against "
        "the dataset's. choice: accuracy by log-likelihood on an MMLU-style file (eval.choice_file, default "
        "the bundled builtin:mc_basic). Results: eval_results.json (never overwritten) and a table.",
    )
    _checkpoint_config_args(evaluate, "eval", "eval.max_samples=50")
    evaluate.add_argument("--model", help="model source (builtin:NAME or a folder), or the base of an adapter")
    evaluate.add_argument("--tasks", help="comma-separated eval.tasks: loss, generation, choice")
    evaluate.add_argument("--out", help="results folder (default: eval.output_dir, else the run's eval/ folder)")
    _address_arg(evaluate)
    evaluate.set_defaults(func=_eval)

    validate = sub.add_parser("validate", help="check a config without running it")
    _config_args(validate)
    validate.add_argument(
        "--explain", action="store_true", help="print the resolved config (and a LLaMA-Factory file's translation)"
    )
    validate.set_defaults(func=_validate)

    data = sub.add_parser("data", help="inspect datasets as training will see them")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    preview = data_sub.add_parser(
        "preview",
        help="rendered samples with learned spans marked, token lengths, truncated/dropped/bad rows",
        description="Runs the training data pipeline over every row of data.dataset (on Ray) and prints "
        "the first samples with the learned spans marked, then statistics. Accepts our YAML or a "
        "LLaMA-Factory flat YAML.",
    )
    _config_args(preview)
    preview.add_argument("-n", "--samples", type=int, default=3, help="samples shown in full (default 3)")
    _address_arg(preview)
    preview.set_defaults(func=_data_preview)

    dashboard = sub.add_parser(
        "dashboard",
        help="open the web control panel: configure, launch on Ray, monitor, sweep, chat, export",
        description="Starts the Streamlit control panel on --host:--port (default 127.0.0.1:8501). Jobs go "
        "to the panel's own local Ray unless --address (or the address field in the panel) names a cluster's "
        "Jobs API, e.g. http://head:8265. Runs are read from the runs folder set in the panel (./saves).",
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    dashboard.add_argument("--address", help="Ray Jobs API address of a cluster (default: a local Ray)")
    dashboard.set_defaults(func=_dashboard)

    chat = sub.add_parser(
        "chat",
        help="chat with a model or a trained checkpoint",
        description="Streams the reply; interactive multi-turn when --prompt is not given.",
    )
    chat.add_argument("--model", help="model source: builtin:NAME, HF folder, or a full-weights run/checkpoint")
    chat.add_argument("--adapter", help="LoRA checkpoint folder or run directory (newest checkpoint)")
    chat.add_argument("--prompt", help="one user message; omit for an interactive session")
    chat.add_argument("--system", help="system prompt (default: the chat template's own)")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 means greedy decoding (default)")
    chat.set_defaults(func=_chat)
    return parser


def _address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster to use (default: $RAY_ADDRESS, else a new local Ray)")


def _checkpoint_config_args(
    parser: argparse.ArgumentParser, section: str, example: str, required: bool = False
) -> None:
    """CONFIG (optional: a checkpoint's own config serves), overrides, and --checkpoint."""
    parser.add_argument("config", nargs="?", help=f"job YAML with a {section}: section (default: the checkpoint's)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"dotted overrides, e.g. {example}")
    parser.add_argument(
        "--checkpoint", required=required, help="a training run directory (its newest checkpoint) or one checkpoint"
    )


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="job YAML (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. train.max_steps=10 data.dataset=identity,alpaca_300",
    )


def main(argv: Sequence[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    parser = build_parser()
    # Overrides may follow options (``validate cfg.yaml --explain train.max_steps=3``), which
    # argparse alone rejects once the positional list has been consumed.
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command == "chat" and not (args.model or args.adapter):
        args.model = ModelConfig().source
    try:
        return int(args.func(args))
    except Exception as err:
        cause = _input_error(err)
        if cause is None:
            raise
        print(f"raytune-ft {args.command}: error: {cause}", file=sys.stderr)
        return 2


def _format_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return f"raytune-ft: warning: {message}\n"


def _input_error(err: BaseException) -> str | None:
    """The bad-input message behind ``err``, also when Ray wrapped it in a task or worker error."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, InputError) and not _is_ray_wrapper(current):
            return str(current)
        stack += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    # Errors raised inside Ray tasks reach the driver as text: find ours in the remote traceback.
    names = [cls.__name__ for cls in _subclasses(InputError)]
    for line in reversed(str(err).splitlines()):
        for name in names:
            if f".{name}: " in line:
                return line.split(f".{name}: ", 1)[1]
    return None


def _subclasses(cls: type[BaseException]) -> list[type[BaseException]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found


def _is_ray_wrapper(err: BaseException) -> bool:
    # Ray's task errors subclass the user's exception type; report the innermost one instead.
    return type(err).__module__.startswith("ray.")


if __name__ == "__main__":
    sys.exit(main())
