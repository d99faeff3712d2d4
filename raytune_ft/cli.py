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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raytune_ft import __version__
from raytune_ft.config import InputError, JobConfig, ModelConfig, dump_config, llamafactory_translation, load_config

if TYPE_CHECKING:
    from raytune_ft.serve import Chatter

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
  raytune-ft env
"""


def _train(args: argparse.Namespace) -> int:
    from raytune_ft.rl.launch import worker_setup
    from raytune_ft.train import run_training

    _check_kind(args.config, "train")
    cfg = load_config(args.config, args.overrides)
    outcome = run_training(cfg, address=args.address, setup=worker_setup(cfg))
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
    from raytune_ft.export import export_checkpoint, export_init_from
    from raytune_ft.models import CONFIG_FILE, latest_checkpoint

    config, overrides = _split_config(args.config, args.overrides)
    _check_kind(config, "export")
    flags = {"export.format": args.format, "export.gguf_type": args.gguf_type}
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    if args.checkpoint is None:  # a merge file: model.source + adapter.init_from (LLaMA-Factory's merge YAML)
        if config is None:
            raise InputError("export: give --checkpoint (a run or checkpoint), or a config naming adapter.init_from")
        job = load_config(config, overrides)
        target = export_init_from(job, _export_out(args.out, job.export.out_dir), overwrite=args.overwrite)
        source, cfg = f"{job.model.source} + {', '.join(job.adapter.init_from)}", job.export
    else:
        checkpoint = latest_checkpoint(args.checkpoint)
        cfg = load_config(config or checkpoint / CONFIG_FILE, overrides).export
        out = _export_out(args.out, cfg.out_dir)
        target = export_checkpoint(checkpoint, out, cfg, overwrite=args.overwrite, base=args.base)
        source = str(checkpoint)
    print(f"raytune_ft: exported {source} ({cfg.format}) to {target}")
    if cfg.format == "hf":
        print(f'raytune_ft: try it: raytune-ft chat --model {target} --prompt "Hello"')
    return 0


def _export_out(flag: str | None, configured: str | None) -> Path:
    out = flag or configured
    if out is None:
        raise InputError("export: give the destination folder with --out DIR (or export.out_dir in the config)")
    return Path(out)


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
    if config is not None and "=" in config and not Path(config).is_file():  # only overrides were given
        return None, [config, *overrides]
    return config, list(overrides)


def _eval(args: argparse.Namespace) -> int:
    from raytune_ft.evaluate import eval_target, format_report, run_evaluation
    from raytune_ft.models import CONFIG_FILE, latest_checkpoint
    from raytune_ft.train import start_ray

    config, overrides = _split_config(args.config, args.overrides)
    _check_kind(config, "eval")
    if args.tasks:
        overrides.append(f"eval.tasks={args.tasks}")
    if config is None and args.checkpoint is not None:
        config = str(latest_checkpoint(args.checkpoint) / CONFIG_FILE)
    cfg = load_config(config, overrides)
    target = eval_target(args.checkpoint, args.model, cfg)
    start_ray(args.address, init=cfg.scaling.ray_init)
    report = run_evaluation(cfg, target, output_dir=args.out)
    print(format_report(report))
    print(f"raytune_ft: results in {report.path}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from raytune_ft.data import resolve_datasets

    cfg = load_config(args.config, args.overrides)  # template and tool format names are checked here
    resolve_datasets(cfg.data.dataset, cfg.data.dataset_dir)
    if cfg.data.eval_dataset:
        resolve_datasets(cfg.data.eval_dataset, cfg.data.dataset_dir)
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

    from raytune_ft.data.pipeline import checked_sources
    from raytune_ft.data.preview import build_preview, format_preview
    from raytune_ft.models import load_row_tokenizer, pin_sources
    from raytune_ft.models.vision import image_encoder_loader
    from raytune_ft.train import job_tokenizer, start_ray

    cfg = pin_sources(load_config(args.config, args.overrides))  # the workers read the commit the driver read
    tokenizer = job_tokenizer(cfg)  # fails fast on a missing model or template, before Ray starts
    sources = checked_sources(cfg.data.dataset, cfg.data.dataset_dir, cfg.method.rows)  # and on an empty file
    load = functools.partial(load_row_tokenizer, cfg.model)
    start_ray(args.address, init=cfg.scaling.ray_init)
    concurrency = cfg.data.tokenize_concurrency or 1
    report = build_preview(
        cfg.data, load, concurrency, samples=args.samples, stage=cfg.method.rows, seed=cfg.train.seed, sources=sources,
        load_media=image_encoder_loader(cfg),
    )  # fmt: skip
    print(format_preview(report, tokenizer, cfg.data, cfg.train.per_device_batch_size))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from raytune_ft.serve import interactive_chat

    hf_logging.disable_progress_bar()
    config, overrides = _split_config(args.config, args.overrides)
    cfg = load_config(config, overrides) if config is not None or overrides else None
    if cfg is None and not (args.model or args.adapter):
        args.model = ModelConfig().source
    chatter = _chatter(args, cfg)
    max_new_tokens = args.max_new_tokens or (cfg.eval.max_new_tokens if cfg is not None else 256)
    temperature = args.temperature if args.temperature is not None else (cfg.eval.temperature if cfg else 0.0)
    try:
        if args.prompt is None:
            interactive_chat(chatter, args.system, max_new_tokens, temperature)
            return 0
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        chatter.reply(messages, max_new_tokens, temperature, _print_piece)
        print()
        return 0
    finally:
        chatter.close()


def _chatter(args: argparse.Namespace, cfg: JobConfig | None) -> Chatter:
    """The engine a chat runs on: vLLM when the config asks for it (``infer_backend: vllm``), else transformers;
    a config's named template (``data.template``) renders the prompts."""
    from raytune_ft.models import load_for_inference
    from raytune_ft.serve import HFChatter, VllmChatter

    if cfg is not None and cfg.serve.engine == "vllm":
        from raytune_ft.models.vllm_engine import start_vllm, vllm_target

        print("raytune_ft: starting vLLM (serve.engine: vllm) ...", file=sys.stderr, flush=True)
        serve = cfg.serve
        settings: dict[str, Any] = {"dtype": serve.dtype} if serve.dtype != "auto" else {}
        settings |= {"max_model_len": serve.max_model_len} if serve.max_model_len else {}
        engine = start_vllm(*vllm_target(args.model, args.adapter, cfg), kv_cache_gib=serve.kv_cache_gib,
                            engine_kwargs={**settings, **serve.engine_kwargs})  # fmt: skip
        _with_template(engine.tokenizer, cfg)
        return VllmChatter(engine)
    model, tokenizer = load_for_inference(args.model, args.adapter, cfg)
    return HFChatter(model, _with_template(tokenizer, cfg))


def _with_template(tokenizer: Any, cfg: JobConfig | None) -> Any:
    if cfg is None or cfg.data.template is None:
        return tokenizer
    from raytune_ft.data.templates import apply_template, template_options

    return apply_template(tokenizer, cfg.data.template, template_options(cfg.data))


def _print_piece(text: str) -> None:
    print(text, end="", flush=True)


def _env(args: argparse.Namespace) -> int:
    from raytune_ft.train.environment import describe_environment, format_environment

    print(format_environment(describe_environment(args.address)))
    return 0


# The verb each kind of LLaMA-Factory YAML is for (config_kind), and the kinds each verb takes.
_VERBS = {"train": "train", "chat": "chat", "export": "export", "predict": "eval"}
_TAKES = {"train": {"train"}, "export": {"export", "train"}, "eval": {"predict", "train"}}


def _check_kind(config: str | None, verb: str) -> None:
    """Refuse a LLaMA-Factory YAML meant for another verb (a merge file given to train), naming the right one."""
    if config is None or not Path(config).is_file():
        return
    translation = llamafactory_translation(config)
    if translation is None or translation.kind in _TAKES[verb]:
        return
    what = {"chat": "an inference", "export": "a merge (export_dir)", "predict": "a predict (do_predict)"}
    raise InputError(
        f"{config} is {what.get(translation.kind, 'a training')} config: run raytune-ft {_VERBS[translation.kind]} "
        f"{config}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raytune-ft",
        description="Fine-tune and chat with LLMs on Ray: the same YAML on a laptop or a cluster.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"raytune-ft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="fine-tune a model as described by a YAML config",
        description="Fine-tune on Ray Train. Re-running a run_name resumes it. Online stages (method.stage: grpo, ppo) "
        "also start their vLLM rollout engines (and reward models) as Ray actors for the run's length.",
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
        "same command continues an interrupted sweep. Each trial of an online stage starts its own rollout "
        "engines; rank those by tune.metric: reward with tune.mode: max.",
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
        description="Merges the newest checkpoint of a run (or one checkpoint), or without --checkpoint the "
        "adapters a config names (adapter.init_from; LLaMA-Factory's merge YAML), into a standalone model: "
        "Hugging Face safetensors sharded at export.max_shard_size with the tokenizer and chat template "
        "(loads in transformers, vLLM and raytune-ft serve), or one GGUF file (f16 or q8_0) for llama.cpp. "
        "The export settings come from CONFIG, else from the checkpoint's own config. A non-empty --out is "
        "refused unless --overwrite is given; it is replaced only once the new export is complete.",
    )
    _checkpoint_config_args(export, "export", "export.dtype=bfloat16")
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
        help="chat with a model or a trained checkpoint (also from a LLaMA-Factory inference YAML)",
        description="Streams the reply; interactive multi-turn when --prompt is not given. CONFIG (ours, or a "
        "LLaMA-Factory inference YAML) names the model (model.source), adapters to apply (adapter.init_from, "
        "LLaMA-Factory's adapter_name_or_path), the template (data.template) and the engine (serve.engine: vllm "
        "runs vLLM in this process, eager, with serve.dtype, serve.max_model_len and serve.engine_kwargs; "
        "otherwise transformers in float32).",
    )
    chat.add_argument("config", nargs="?", help="job YAML or LLaMA-Factory inference YAML (optional)")
    chat.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. model.source=DIR")
    chat.add_argument("--model", help="model source: builtin:NAME, Hub id, HF folder, or a full-weights run/checkpoint")
    chat.add_argument("--adapter", help="LoRA checkpoint folder, run directory (newest checkpoint) or PEFT folder")
    chat.add_argument("--prompt", help="one user message; omit for an interactive session")
    chat.add_argument("--system", help="system prompt (default: the chat template's own)")
    chat.add_argument("--max-new-tokens", type=int, help="longest reply (default: the config's, else 256)")
    chat.add_argument("--temperature", type=float, help="0 means greedy decoding (default: the config's, else 0)")
    chat.set_defaults(func=_chat)

    env = sub.add_parser(
        "env",
        help="print versions, devices, caches and the Ray cluster a job would join (for bug reports)",
        description="Prints the versions of raytune_ft and the libraries it drives, the CPUs, memory and GPUs "
        "this machine shows, the model caches and hub mode, and which Ray cluster a command would join "
        "(--address, else $RAY_ADDRESS, else a new local Ray). Starts nothing.",
    )
    _address_arg(env)
    env.set_defaults(func=_env)
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
