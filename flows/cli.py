"""The ``lmwright`` command: run flows locally on an embedded Prefect.

Every command prints the directory of its result as the last line of stdout;
progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", action="append", default=[], metavar="SRC",
                   help="file, directory, fsspec URL or builtin:pydocs (repeatable); default: the config's sources")
    p.add_argument("--workdir", help="where datasets, caches and reports go (default: the config's, else ./lmwright-work)")
    p.add_argument("--config", help="preset name (tiny, small) or a YAML file")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override one config field, value parsed as YAML (repeatable)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmwright", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("curate", help="raw sources -> clean, deduplicated corpus + data card"))
    _common(sub.add_parser("run", help="the whole pipeline (today: curate)"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Imported late: Prefect and the stages are slow to import, --help should not be.
    from flows.config import ConfigError, CurateConfig, load_config

    overrides = list(args.overrides)
    if args.source:
        overrides.append("ingest.sources=" + _yaml_list(args.source))
    try:
        config = load_config(CurateConfig, args.config, overrides, workdir=args.workdir)
    except ConfigError as e:
        print(f"lmwright: {e}", file=sys.stderr)
        return 2
    Path(config.workdir).mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"workdir": str(Path(config.workdir).resolve())})

    from flows.curate import curate
    from flows.runners import build_task_runner

    flow = curate.with_options(task_runner=build_task_runner(config.runner))
    result = flow(config)
    print(f"data card: {result.card}", file=sys.stderr)
    print(result.corpus)
    return 0


def _yaml_list(items: list[str]) -> str:
    import json

    return json.dumps(items)


if __name__ == "__main__":
    sys.exit(main())
