"""Benchmark: an all-cached rerun of ``lmwright curate`` and ``lmwright run``, and where its time goes.

    uptime; python benchmarks/cached_rerun.py [--workdir W] [--config tiny] [--repeat 5]
        [--commands curate,run] [--prefect-home DIR] [--json out.json]; uptime

Without ``--workdir`` it fills a temporary workdir first (``lmwright curate`` and ``lmwright run``
once each, minutes: the run trains); with one it reuses what is there. Every command then runs
once untimed (file cache, Prefect's database) and ``--repeat`` times timed; the tables give each
phase's median and the 1-minute load average before each run beside it.

Each timed run is a fresh process that does what the ``lmwright`` console script does
(``deployments.cli.main``) after installing timers on a few Prefect internals (no lmwright code is
changed), so its phases are:

* ``startup+imports``: process start -> the first flow call (the interpreter, the CLI, the config,
  every module the command imports before it runs a flow), less the server wait in it;
* ``server start``: the embedded Prefect server, from launch to answering ``/api/health``. Where
  Prefect starts it, that is the import of its server package into the CLI process plus
  ``SubprocessASGIServer.start`` (spawn uvicorn, wait), all in the main thread; where lmwright
  starts it (``deployments/embedded_server.py``), from the launch to the moment the command found it
  answering (it overlaps the other phases). ``server wait``: the part of it the main thread spent
  blocked, before or inside the flow call;
* ``orchestration``: the outermost flow call minus the server wait inside it: flow and task runs
  (counted: ``flow runs``, ``task runs``, of which ``Cached``), cache lookups, logs and events;
* ``rest``: after the flow returned until the process is gone (printing, delivering logs and
  events, stopping the server). ``startup+imports + server wait + orchestration + rest = total``.

Prefect's state lives in ``--prefect-home`` (default: a temporary one, shared by all runs, like a
user's ~/.prefect), never in the user's.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
PHASES = ("total", "startup+imports", "server start", "server wait", "orchestration", "rest")
HEAVY = ("torch", "datasketch", "scipy", "great_expectations", "transformers", "prefect.server.api.server")


# --------------------------------------------------------------------------- child: one timed lmwright process


class AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``hooks[name](module)`` right after module ``name`` is first executed."""

    def __init__(self, hooks: dict[str, Callable[[Any], None]]) -> None:
        self.hooks = hooks

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.hooks:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader, hook = spec.loader, self.hooks.pop(name)
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            t0 = time.time()
            run(module)
            hook(module, t0, time.time())

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def child(out: str, argv: list[str]) -> int:
    # the parent's clock right before it spawned this process: interpreter start-up counts as start-up
    marks: dict[str, Any] = {"proc_start": float(os.environ["CACHED_RERUN_T0"]), "flow_runs": 0, "servers": [], "task_runs": {}}
    lmwright_server: dict[str, float] = {}
    depth = [0]

    def on_server(module: Any, t0: float, t1: float) -> None:
        # Prefect imports its whole server package into the CLI process to launch its temporary server
        marks["servers"].append({"begin": t0, "end": t1, "already_running": False, "import": True,
                                 "main_thread": threading.current_thread() is threading.main_thread()})
        cls = module.SubprocessASGIServer
        start = cls.start

        def timed_start(self: Any, *a: Any, **kw: Any) -> Any:
            already = self.running
            t0 = time.time()
            try:
                return start(self, *a, **kw)
            finally:
                marks["servers"].append({"begin": t0, "end": time.time(), "already_running": already,
                                         "main_thread": threading.current_thread() is threading.main_thread()})

        cls.start = timed_start

    def on_flow_engine(module: Any, *_: float) -> None:
        run_flow = module.run_flow

        def timed_run_flow(*a: Any, **kw: Any) -> Any:
            marks["flow_runs"] += 1
            depth[0] += 1
            if depth[0] == 1:
                marks.setdefault("flow_call", time.time())
            try:
                return run_flow(*a, **kw)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    marks["flow_return"] = time.time()

        module.run_flow = timed_run_flow

    def on_task_engine(module: Any, *_: float) -> None:
        emit = module.emit_task_run_state_change_event

        def counted(*a: Any, **kw: Any) -> Any:
            run, state = kw.get("task_run"), kw.get("validated_state")
            if run is not None and state is not None:
                marks["task_runs"][str(run.id)] = [run.name, state.name]
            return emit(*a, **kw)

        module.emit_task_run_state_change_event = counted

    sys.meta_path.insert(0, AfterImport({
        "prefect.server.api.server": on_server, "prefect.flow_engine": on_flow_engine, "prefect.task_engine": on_task_engine,
    }))

    import atexit

    def on_embedded(module: Any, *_: float) -> None:  # lmwright's own server (deployments/embedded_server.py), if it has one
        server = module.EmbeddedServer
        start, wait = server.start, server.wait

        def timed_start(self: Any, *a: Any, **kw: Any) -> Any:
            lmwright_server.setdefault("begin", time.time())
            return start(self, *a, **kw)

        def timed_wait(self: Any) -> None:
            t0 = time.time()
            try:
                wait(self)
            finally:
                marks["servers"].append({"begin": lmwright_server.get("begin", t0), "end": time.time(), "wait_begin": t0,
                                         "already_running": False, "main_thread": True})

        server.start, server.wait = timed_start, timed_wait

    sys.meta_path[0].hooks["lmwright.deployments.embedded_server"] = on_embedded

    def write() -> None:  # registered first, so it runs after Prefect's own exit handlers (server stop, event flush)
        marks["exit"] = time.time()
        marks["heavy_modules"] = [m for m in HEAVY if m in sys.modules]
        Path(out).write_text(json.dumps(marks))

    atexit.register(write)
    from lmwright.deployments.cli import main

    marks["main"] = time.time()
    return main(argv)


# --------------------------------------------------------------------------- parent


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def lmwright(args: list[str], env: dict[str, str], log: Path) -> None:
    """Run ``lmwright ARGS`` untimed (filling or warming the workdir); output goes to ``log``."""
    with open(log, "a") as f:
        f.write(f"$ lmwright {' '.join(args)}\n")
        f.flush()
        done = subprocess.run([sys.executable, "-m", "lmwright.deployments.cli", *args], env=env, stdout=f, stderr=f, cwd=REPO)
    if done.returncode:
        sys.exit(f"lmwright {' '.join(args)} failed ({done.returncode}); see {log}")


def timed(args: list[str], env: dict[str, str], log: Path, scratch: Path) -> dict[str, Any]:
    marks_file = scratch / "marks.json"
    marks_file.unlink(missing_ok=True)
    load = loadavg()
    with open(log, "a") as f:
        f.write(f"$ (timed) lmwright {' '.join(args)}\n")
        f.flush()
        t0 = time.time()
        done = subprocess.run([sys.executable, __file__, "--child", str(marks_file), "--", *args],
                              env={**env, "CACHED_RERUN_T0": repr(t0)}, stdout=f, stderr=f, cwd=REPO)
    wall = time.time() - t0
    if done.returncode:
        sys.exit(f"lmwright {' '.join(args)} failed ({done.returncode}); see {log}")
    return phases(json.loads(marks_file.read_text()), wall, load)


def phases(m: dict[str, Any], wall: float, load: float) -> dict[str, Any]:
    start, call, ret = m["proc_start"], m["flow_call"], m["flow_return"]
    started = [s for s in m["servers"] if not s["already_running"]]
    server = sum(s["end"] - s["begin"] for s in started)  # Prefect: import + start(); lmwright: launch -> answered
    waits = [(s.get("wait_begin", s["begin"]), s["end"]) for s in started if s["main_thread"]]
    # the main thread's time blocked on the server (importing its package, waiting for it), before and in the flow call
    wait_in_flow = sum(max(0.0, min(e, ret) - max(b, call)) for b, e in waits)
    wait = sum(e - b for b, e in waits)
    imports = (call - start) - (wait - wait_in_flow)
    orchestration = (ret - call) - wait_in_flow
    states = [state for _, state in m["task_runs"].values()]
    return {
        "total": wall,
        "startup+imports": imports,
        "server start": server,
        "server wait": wait,
        "orchestration": orchestration,
        "rest": wall - (ret - start),
        "flow runs": m["flow_runs"],
        "task runs": len(states),
        "cached": states.count("Cached"),
        "load": load,
        "task names": sorted(name for name, _ in m["task_runs"].values()),
        "heavy modules": m.get("heavy_modules", []),
        "marks": m,
    }


def report(command: str, runs: list[dict[str, Any]]) -> str:
    lines = [f"### lmwright {command} (all cached), {len(runs)} runs", "",
             "| phase | median s | runs (s) | 1-min load before each run |", "|---|---:|---|---|"]
    loads = " ".join(f"{r['load']:.1f}" for r in runs)
    for phase in PHASES:
        values = [r[phase] for r in runs]
        lines.append(f"| {phase} | {statistics.median(values):.2f} | {' '.join(f'{v:.1f}' for v in values)} | {loads} |")
    for count in ("flow runs", "task runs", "cached"):
        values = [r[count] for r in runs]
        lines.append(f"| {count} | {statistics.median(values):g} | {' '.join(str(v) for v in values)} | |")
    names = runs[-1]["task names"]
    lines += ["", f"task runs of the last run: {', '.join(names) or 'none'}",
              f"heavy modules loaded by the last run: {', '.join(runs[-1]['heavy modules']) or 'none'}", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", help="a workdir to reuse (default: a temporary one, filled first)")
    p.add_argument("--config", default="tiny")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--commands", default="curate,run")
    p.add_argument("--prefect-home", help="PREFECT_HOME for every run (default: a temporary one)")
    p.add_argument("--json", help="write every run's numbers here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a.child, a.args)

    scratch = Path(tempfile.mkdtemp(prefix="cached-rerun-"))
    workdir = Path(a.workdir).resolve() if a.workdir else scratch / "work"
    home = Path(a.prefect_home).resolve() if a.prefect_home else scratch / "prefect-home"
    # PYTHONPATH: this checkout's code, also where another one is installed in editable mode
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # older CLIs: a busy machine misses 20 s
    env.pop("PREFECT_API_URL", None)  # the embedded server, as a user without a server gets it
    log = scratch / "lmwright.log"
    commands = a.commands.split(",")
    print(f"workdir {workdir}; PREFECT_HOME {home}; output of every run in {log}", file=sys.stderr)
    base = ["--config", a.config, "--workdir", str(workdir)]
    if not a.workdir:
        for command in ("curate", "run"):
            print(f"filling: lmwright {command} (load {loadavg():.1f})", file=sys.stderr)
            lmwright([command, *base], env, log)

    results: dict[str, list[dict[str, Any]]] = {}
    print(f"# cached rerun, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}\n")
    for command in commands:
        lmwright([command, *base], env, log)  # warm-up: file cache, Prefect's database exists
        results[command] = []
        for i in range(a.repeat):
            r = timed([command, *base], env, log, scratch)
            print(f"{command} #{i + 1}: {r['total']:.1f} s (load {r['load']:.1f})", file=sys.stderr)
            results[command].append(r)
        print(report(command, results[command]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
