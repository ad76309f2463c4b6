"""The ``lmwright`` command: run flows locally on an embedded Prefect.

Every command prints the directory of its result as the last line of stdout;
progress and logs go to stderr. Stages before the one asked for run through the
cache, so ``lmwright pretrain --source some.txt`` curates and tokenizes it first.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

COMMANDS = {
    "curate": "raw sources -> clean, deduplicated corpus + data card",
    "tokenize": "... -> BPE tokenizer and token arrays (train/val)",
    "pretrain": "... -> next-token pretraining",
    "finetune": "... -> fine-tuning from the pretrained model",
    "evaluate": "... -> held-out metrics (metrics.json), samples, gate",
    "run": "the whole pipeline: curate -> tokenize -> pretrain -> finetune -> evaluate -> export",
    "serve": "serve the pipeline, curate and nightly refresh deployments from this process (Prefect UI triggers them)",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmwright", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        c = sub.add_parser(name, help=help_text)
        c.add_argument("--source", action="append", default=[], metavar="SRC",
                       help="file, directory, fsspec URL or builtin:pydocs (repeatable); default: the config's sources")
        c.add_argument("--workdir", help="datasets, models, caches and reports (default: the config's, else ./lmwright-work)")
        c.add_argument("--config", help="preset name (tiny, small, gpt2-124m) or a YAML file")
        c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                       help="override one config field, value parsed as YAML (repeatable)")
        if name == "serve":
            c.add_argument("--no-schedule", action="store_true", help="serve refresh without its nightly schedule")
        elif name != "curate":
            c.add_argument("--max-seconds", type=float, help="wall-clock budget of the training stage")
            c.add_argument("--max-steps", type=int, help="optimizer steps of the training stage")
    return p


def budget_overrides(command: str, max_seconds: float | None, max_steps: int | None) -> list[str]:
    section = "finetune.train" if command == "finetune" else "pretrain"
    out = []
    if max_seconds is not None:
        out.append(f"{section}.max_seconds={max_seconds}")
    if max_steps is not None:
        out.append(f"{section}.max_steps={max_steps}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The embedded Prefect keeps its state in SQLite: let busy writers wait instead of failing.
    os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "60")
    # Imported late: Prefect, torch and the stages are slow to import; --help should not be.
    import json

    from flows.config import ConfigError, CurateConfig, PipelineConfig, load_config

    overrides = list(args.overrides)
    if args.source:
        overrides.append("ingest.sources=" + json.dumps(args.source))
    overrides += budget_overrides(args.command, getattr(args, "max_seconds", None), getattr(args, "max_steps", None))
    model = CurateConfig if args.command == "curate" else PipelineConfig
    try:
        config = load_config(model, args.config, overrides, workdir=args.workdir)
    except ConfigError as e:
        print(f"lmwright: {e}", file=sys.stderr)
        return 2
    Path(config.workdir).mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"workdir": str(Path(config.workdir).resolve())})

    if args.command == "serve":
        from deployments.serve import deployment_parameters, serve_all

        # The deployments name the preset and only what was given here, so a run's partial config keeps them.
        params = deployment_parameters(args.config, args.overrides, args.workdir and config.workdir, args.source)
        print("serving deployments pipeline/pipeline, curate/curate, refresh/refresh; Ctrl-C stops", file=sys.stderr)
        serve_all(config, params, schedule_refresh=not args.no_schedule)
        return 0

    from flows.runners import build_task_runner

    runner = build_task_runner(config.runner)
    if args.command == "curate":
        from flows.curate import curate

        result = curate.with_options(task_runner=runner)(config)
        print(f"data card: {result.card}", file=sys.stderr)
        print(result.corpus)
        return 0

    from flows.pipeline import pipeline

    until = "export" if args.command == "run" else args.command
    result = pipeline.with_options(task_runner=runner)(config, until=until)
    print(f"data card: {result.card}", file=sys.stderr)
    if result.models:
        print(f"model: {result.models.finetuned or result.models.pretrained}", file=sys.stderr)
    if result.evaluation:
        m = result.evaluation.metrics
        print(f"report: {result.evaluation.report} (val_loss {m['val_loss']}, val_bpb {m['val_bpb']})", file=sys.stderr)
        if result.evaluation.export:
            state = "promoted" if result.evaluation.promoted else "not promoted: " + "; ".join(result.evaluation.reasons)
            print(f"export: {result.evaluation.export} ({state})", file=sys.stderr)
    print(result.result_dir(until))
    return 0


if __name__ == "__main__":
    sys.exit(main())
