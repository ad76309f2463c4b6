"""The ``lmwright`` command: run flows locally on an embedded Prefect.

Every pipeline command prints the directory of its result as the last line of stdout;
progress and logs go to stderr. Stages before the one asked for run through the
cache, so ``lmwright pretrain --source some.txt`` curates and tokenizes it first.
A mistake the user can fix (a bad config, a missing source or model) is one line,
``lmwright: ...``, and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lmwright.tasks.core.errors import UserError  # dependency-free: keeps --help fast

# With no --config a run is sized for its built-in corpus: the models' bare defaults are a
# starting point for configs, not a run (on the built-in corpus they memorize it).
DEFAULT_PRESET = "tiny"
DEFAULT_WORKDIR = "lmwright-work"  # flows.config.DEFAULT_WORKDIR; importing that module is slow for --help


@dataclass(frozen=True)
class Command:
    summary: str
    description: str
    example: str


PIPELINE = {
    "curate": Command(
        "raw sources -> clean, deduplicated corpus + data card",
        "Ingest, normalize, filter (language, quality, PII, bias) and deduplicate the sources; "
        "write the corpus and its data card. Prints the corpus directory last.",
        "lmwright curate --source docs/ --source crawl.jsonl.gz --workdir W --config tiny \\\n"
        "      --set quality.gopher_quality.min_doc_words=80",
    ),
    "tokenize": Command(
        "... -> BPE tokenizer and token arrays (train/val)",
        "Curate (cached), then train or reuse a byte-level BPE tokenizer and write train/val token arrays.",
        "lmwright tokenize --source notes.txt --workdir W --config tiny",
    ),
    "pretrain": Command(
        "... -> next-token pretraining",
        "Curate and tokenize (cached), then pretrain the model. --max-steps/--max-seconds set pretrain's budget.",
        "lmwright pretrain --source notes.txt --workdir W --config tiny --max-steps 200",
    ),
    "finetune": Command(
        "... -> fine-tuning from the pretrained model",
        "Everything up to pretraining (cached), then fine-tune on prompt/response pairs. "
        "--max-steps/--max-seconds set fine-tuning's budget (finetune.train), not pretraining's.",
        "lmwright finetune --workdir W --config tiny --max-steps 50",
    ),
    "evaluate": Command(
        "... -> held-out metrics (metrics.json), samples, gate",
        "Everything up to fine-tuning (cached), then score the model on held-out data. "
        "Training budgets are set with --set pretrain.max_steps=... / finetune.train.max_steps=...",
        "lmwright evaluate --workdir W --config tiny",
    ),
    "run": Command(
        "the whole pipeline: curate -> tokenize -> pretrain -> finetune -> evaluate -> export",
        "The whole pipeline; the export is promoted if it passes the gate. Prints the export directory last. "
        "--max-steps/--max-seconds set pretraining's budget.",
        "lmwright run --config tiny",
    ),
}
# Which config section a command's --max-steps/--max-seconds go to; commands not listed train nothing of their own.
BUDGET_SECTION = {"pretrain": "pretrain", "run": "pretrain", "finetune": "finetune.train"}

OTHER = {
    "serve": Command(
        "serve the pipeline, curate and nightly refresh deployments from this process (Prefect UI triggers them)",
        "Create the pipeline, curate and refresh deployments on the Prefect server in PREFECT_API_URL and run "
        "what the UI triggers, until Ctrl-C.",
        "prefect server start &  lmwright serve --config tiny --workdir W",
    ),
    "generate": Command(
        "sample text from a trained model (a prompt, or --chat)",
        "Complete a prompt, or chat in turns (--chat) with the model's chat template. MODEL is a training "
        "run (W/models/<stage>/<fingerprint>), an export (.../hf) or a workdir (its promoted model); "
        "default: the promoted model of --workdir.",
        "lmwright generate 'def read_file(path):' --workdir W --max-new-tokens 60 --temperature 0.7\n"
        "  lmwright generate --chat --model W/latest/finetune",
    ),
    "status": Command(
        "what the last runs in a workdir produced, and where",
        "The latest output of every stage (also under W/latest/<stage>), its size or scores, and the promoted model.",
        "lmwright status --workdir W",
    ),
    "publish": Command(
        "upload an export to a Hugging Face Hub model repository (private unless --public)",
        "Check EXPORT (the files transformers needs, the model card's YAML header and links), then upload it with "
        "huggingface_hub; the token is HF_TOKEN or a `hf auth login`. --dry-run checks and lists the files, uploads nothing.",
        "lmwright publish W/latest/export/hf --repo-id me/lmwright-tiny --dry-run",
    ),
    "config": Command(
        "list every --set key with its default, or show the resolved config",
        "--list prints 'section.key  default  description' for every key --set accepts (defaults after the preset "
        "and --set); --show prints the resolved config as YAML, ready to save and pass to --config.",
        "lmwright config --list --config tiny | grep quality.\n  lmwright config --show --config tiny --set pretrain.max_steps=100",
    ),
}


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmwright")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _subparser(sub: Any, name: str, command: Command) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=command.summary,
        description=command.description,
        epilog=f"example:\n  {command.example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _config_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--source", action="append", default=[], metavar="SRC",
                   help="file, directory, fsspec URL or builtin:pydocs (repeatable); default: the config's sources")
    c.add_argument("--workdir", help=f"datasets, models, caches and reports (default: the config's, else ./{DEFAULT_WORKDIR})")
    c.add_argument("--config", default=DEFAULT_PRESET,
                   help=f"preset name (tiny, small, gpt2-124m) or a YAML file (default: {DEFAULT_PRESET})")
    c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override one config field, value parsed as YAML (repeatable; keys: lmwright config --list)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmwright", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"lmwright {package_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, command in PIPELINE.items():
        c = _subparser(sub, name, command)
        _config_options(c)
        if name in BUDGET_SECTION:
            section = BUDGET_SECTION[name]
            c.add_argument("--max-steps", type=int, help=f"optimizer steps ({section}.max_steps)")
            c.add_argument("--max-seconds", type=float, help=f"wall-clock guard ({section}.max_seconds)")

    c = _subparser(sub, "serve", OTHER["serve"])
    _config_options(c)
    c.add_argument("--no-schedule", action="store_true", help="serve refresh without its nightly schedule")

    c = _subparser(sub, "generate", OTHER["generate"])
    c.add_argument("prompt", nargs="?", default="", help="text to complete (not with --chat)")
    c.add_argument("--chat", action="store_true", help="interactive turns on stdin, one line per user turn; Ctrl-D ends")
    c.add_argument("--system", help="a system message that opens the chat (with --chat)")
    c.add_argument("--model", help="training run, export or workdir (default: the promoted model of --workdir)")
    c.add_argument("--workdir", help=f"whose promoted model to use (default: ./{DEFAULT_WORKDIR})")
    c.add_argument("--max-new-tokens", type=int, default=200, help="tokens to sample at most (default: 200)")
    c.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default: 0.8)")
    c.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens; 0: all (default: 50)")
    c.add_argument("--seed", type=int, default=1337, help="same seed, same text (default: 1337)")
    c.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")

    c = _subparser(sub, "status", OTHER["status"])
    c.add_argument("--workdir", help=f"the workdir to report on (default: ./{DEFAULT_WORKDIR})")

    c = _subparser(sub, "publish", OTHER["publish"])
    c.add_argument("export", help="an export directory (W/exports/export/<fingerprint>/hf)")
    c.add_argument("--repo-id", required=True, help="the Hub repository, user/name or org/name")
    c.add_argument("--dry-run", action="store_true", help="check and list the files; upload nothing")
    c.add_argument("--public", action="store_true", help="make a new repository public (default: private)")

    c = _subparser(sub, "config", OTHER["config"])
    _config_options(c)
    show = c.add_mutually_exclusive_group()
    show.add_argument("--list", action="store_true", help="every --set key with its default and description")
    show.add_argument("--show", action="store_true", help="the resolved config as YAML (the default)")
    return p


class UsageError(UserError, ValueError):
    """A command-line mistake found by the CLI itself (e.g. a workdir that is a file)."""


def budget_overrides(command: str, max_seconds: float | None, max_steps: int | None) -> list[str]:
    section = BUDGET_SECTION.get(command)
    out = []
    if section and max_seconds is not None:
        out.append(f"{section}.max_seconds={max_seconds}")
    if section and max_steps is not None:
        out.append(f"{section}.max_steps={max_steps}")
    return out


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user must change something": printed as one line, exit code 2.

    ``UserError`` covers config and source errors, a missing model and the CLI's own ``UsageError``.
    """
    from lmwright.tasks.core.files import DiskError

    return (UserError, DiskError)


def quiet_tracebacks_of_user_errors() -> None:
    """Prefect logs a failed run's traceback (100+ lines); for a user error the one line says it all."""
    import logging

    errors = user_errors()

    class DropTraceback(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], errors):
                record.exc_info, record.exc_text = None, None
            return True

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(DropTraceback())


EMBEDDED_SERVER_STARTUP_SECONDS = 180


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The embedded Prefect keeps its state in SQLite: let busy writers wait instead of failing.
    os.environ.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "60")
    # Prefect's 20 s for the embedded server to answer is missed on a busy 2-core machine;
    # a default run must not fail because the machine is busy, only start later.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EMBEDDED_SERVER_STARTUP_SECONDS))
    try:
        quiet_tracebacks_of_user_errors()
        from lmwright.deployments.embedded_server import command_server

        with command_server(args.command, PIPELINE):  # Prefect's server starts now, while the stages import
            return run_command(args)
    except KeyboardInterrupt:
        print("lmwright: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        print(f"lmwright: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    """The message, kept whole when it lists several fields (a config error), else its first line."""
    from lmwright.flows.config import ConfigError

    text = str(error).strip() or type(error).__name__
    return text if isinstance(error, ConfigError) else text.splitlines()[0]


def run_command(args: argparse.Namespace) -> int:
    # Imported late: Prefect, torch and the stages are slow to import; --help should not be.
    if args.command == "generate":
        return generate(args)
    if args.command == "status":
        return status(Path(args.workdir or DEFAULT_WORKDIR))
    if args.command == "publish":
        return publish(args)
    config = resolve_config(args)
    if args.command == "config":
        return show_config(config, listing=args.list)
    workdir = Path(config.workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"workdir {workdir}: cannot be created ({e.strerror or e})") from None
    config = config.model_copy(update={"workdir": str(workdir.resolve())})

    if args.command == "serve":
        from lmwright.deployments.serve import deployment_parameters, serve_all

        # The deployments name the preset and only what was given here, so a run's partial config keeps them.
        params = deployment_parameters(args.config, args.overrides, args.workdir and config.workdir, args.source)
        print("serving deployments pipeline/pipeline, curate/curate, refresh/refresh; Ctrl-C stops", file=sys.stderr)
        serve_all(config, params, schedule_refresh=not args.no_schedule)
        return 0
    check_sources(config)
    return run_pipeline(args.command, config)


def resolve_config(args: argparse.Namespace) -> Any:
    import json

    from lmwright.flows.config import CurateConfig, PipelineConfig, load_config

    overrides = list(args.overrides)
    if args.source:
        overrides.append("ingest.sources=" + json.dumps(args.source))
    overrides += budget_overrides(args.command, getattr(args, "max_seconds", None), getattr(args, "max_steps", None))
    model = CurateConfig if args.command == "curate" else PipelineConfig
    return load_config(model, args.config, overrides, workdir=args.workdir)


def check_sources(config: Any) -> None:
    """Fail before Prefect starts when a source is missing or unreachable: one line, not two tracebacks."""
    from lmwright.tasks.curate.sources import BUILTINS, check_source

    for spec in config.ingest.sources:
        path = getattr(spec, "path", spec)
        if path not in BUILTINS:
            check_source(path)


def run_pipeline(command: str, config: Any) -> int:
    from lmwright.deployments.embedded_server import wait_for_server
    from lmwright.flows.runners import build_task_runner

    from lmwright.tasks.core.progress import quiet_routine_task_lines

    runner = build_task_runner(config.runner)
    quiet_routine_task_lines()  # each stage shows one live line instead of a line per finished shard
    if command == "curate":
        from lmwright.flows.curate import curate

        wait_for_server()
        result = curate.with_options(task_runner=runner)(config)
        print(f"data card: {result.card}", file=sys.stderr)
        print(result.corpus.path)
        return 0

    from lmwright.flows.pipeline import pipeline

    until = "export" if command == "run" else command
    wait_for_server()
    result = pipeline.with_options(task_runner=runner)(config, until=until)
    print(f"data card: {result.card}", file=sys.stderr)
    if result.models and result.models.pretrained:
        print(f"model: {result.models.final.path}", file=sys.stderr)
    if result.evaluation:
        m = result.evaluation.metrics
        print(f"report: {result.evaluation.report} (val_loss {m['val_loss']}, val_bpb {m['val_bpb']})", file=sys.stderr)
        if result.evaluation.export:
            state = "promoted" if result.evaluation.promoted else "not promoted: " + "; ".join(result.evaluation.reasons)
            print(f"export: {result.evaluation.export} ({state})", file=sys.stderr)
    print(result.result_dir(until))
    return 0


# --------------------------------------------------------------------------- config


def show_config(config: Any, listing: bool) -> int:
    import yaml

    if not listing:
        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True), end="")
        return 0
    from lmwright.flows.config import config_keys

    rows = [(key, _yaml_value(value), description) for key, value, description in config_keys(type(config), config)]
    key_width = max(len(k) for k, _, _ in rows)
    value_width = min(max(len(v) for _, v, _ in rows), 32)
    for key, value, description in rows:
        print(f"{key:<{key_width}}  {value:<{value_width}}  {description}".rstrip())
    return 0


def _yaml_value(value: Any, limit: int = 40) -> str:
    """A value as ``--set`` takes it (YAML flow style); long lists are cut (``config --show`` has them whole)."""
    import yaml
    from pydantic_core import PydanticUndefined, to_jsonable_python

    if value is PydanticUndefined:
        return "(required)"
    text = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- status

STAGE_ORDER = ["ingest", "urlfilter", "license", "normalize", "langid", "quality", "pii", "bias", "dedup", "tokenize",
               "sft", "pretrain", "finetune", "evaluate", "export"]


def _stage_rank(stage: str) -> int:
    """Pipeline position of a pointer's stage (``evaluate-finetune`` sorts as evaluate); unknown stages last."""
    base = stage.split("-")[0]
    return STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER)


def status(workdir: Path) -> int:
    """Print each stage's latest output under ``workdir`` (what ``W/latest/`` records), then the promoted model."""
    import json

    from lmwright.tasks.core.files import read_latest

    if not workdir.is_dir():
        raise UsageError(f"workdir {workdir} does not exist (lmwright status --workdir W)")
    entries = sorted(read_latest(workdir), key=lambda e: _stage_rank(e["stage"]))  # stable: ties stay in time order
    if not entries:
        print(f"{workdir}: no finished stage yet (run lmwright curate or lmwright run)", file=sys.stderr)
    width = max((len(e["stage"]) for e in entries), default=0)
    for e in entries:
        path = Path(e["path"])
        shown = path.relative_to(workdir.resolve()) if path.is_relative_to(workdir.resolve()) else path
        summary = stage_summary(path) if path.is_dir() else "(gone)"
        print(f"{e['stage']:<{width}}  {e['finished'][:19].replace('T', ' ')}  {shown}  {summary}".rstrip())
    promoted = workdir / "promoted.json"
    if promoted.is_file():
        entry = json.loads(promoted.read_text())
        print(f"promoted: {entry['export']} (val_loss {entry.get('val_loss')}, val_bpb {entry.get('val_bpb')})")
    else:
        print("promoted: none yet")
    return 0


def stage_summary(path: Path) -> str:
    """A few words on an output: documents kept, tokens, best validation loss, evaluation scores."""
    import json

    def read(name: str) -> dict[str, Any] | None:
        return json.loads((path / name).read_text()) if (path / name).is_file() else None

    if (metrics := read("metrics.json")) is not None:
        gate = "gate passed" if metrics.get("gate", {}).get("passed") else "gate failed"
        return f"val_loss {metrics.get('val_loss')}, val_bpb {metrics.get('val_bpb')}, {gate}"
    if (result := read("result.json")) is not None:
        return f"{result.get('steps')} steps, best val_loss {result.get('best_val_loss', float('nan')):.4f} at step {result.get('best_step')}"
    if (stats := read("stats.json")) is not None and "kept" in stats:
        return f"{stats['in']} in, {stats['kept']} kept, {stats.get('rejected', 0)} rejected"
    if (manifest := read("manifest.json")) is not None:
        if isinstance(tokens := manifest.get("tokens"), dict):  # tokens per split
            return ", ".join(f"{n:,} {split} tokens" for split, n in tokens.items()) + f", vocab {manifest.get('vocab_size')}"
        if "rows" in manifest:
            return f"{manifest['rows']} documents"
    if (path / "hf" / "config.json").is_file():
        return f"export in {path / 'hf'}"
    return ""


# --------------------------------------------------------------------------- publish


def publish(args: argparse.Namespace) -> int:
    from lmwright.deployments.publish import publish as upload

    plan = upload(Path(args.export), args.repo_id, public=args.public, dry_run=args.dry_run)
    for name in plan.files:
        print(name)
    visibility = "public" if args.public else "private"
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(plan.files)} files ({plan.bytes / 1e6:.1f} MB) to {args.repo_id} ({visibility})", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- generate


def generate(args: argparse.Namespace) -> int:
    from lmwright.models.generate import Sampling, load_generator, stream

    if args.chat and args.prompt:
        raise UsageError("give a prompt or --chat, not both")
    if args.system is not None and not args.chat:
        raise UsageError("--system opens a chat: add --chat")
    if args.max_new_tokens < 1 or args.temperature < 0 or args.top_k < 0:
        raise UsageError("--max-new-tokens must be >= 1, --temperature and --top-k >= 0")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device here (use --device cpu)")
    model = load_generator(Path(args.model or args.workdir or DEFAULT_WORKDIR), device)
    print(f"model: {model.source}", file=sys.stderr)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k or None, args.seed)
    if not args.chat:
        print(args.prompt, end="", flush=True)
        for piece in stream(model, model.encode_prompt(args.prompt), sampling):
            print(piece, end="", flush=True)
        print()
        return 0
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system is not None else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # Ctrl-D / end of input
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = ""
        for piece in stream(model, model.encode_chat(messages), sampling):
            print(piece, end="", flush=True)
            reply += piece
        print()
        messages.append({"role": "assistant", "content": reply})


if __name__ == "__main__":
    sys.exit(main())
