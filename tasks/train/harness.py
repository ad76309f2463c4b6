"""Benchmarks with lm-evaluation-harness (``lm_eval``, optional extra ``eval``) on an exported model.

The model is scored as anyone else would score it: ``lm_eval``'s ``hf`` backend loads the
Hugging Face export. Local tasks are lm-eval YAMLs in a directory (its ``include_path``); their
``dataset_kwargs.data_files`` may be relative to the YAML, and are made absolute in a resolved
copy, so a task directory works from any working directory. Each metric is recorded with its
standard error and a normal-approximation 95% interval.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from lmwright.tasks.core.errors import UserError
from lmwright.tasks.core.shipped import shipped_or_local
from lmwright.tasks.train.params import TaskParams

EXTRA_HINT = "pip install 'lmwright[eval]'"


class TaskError(UserError):
    """A benchmark that cannot run: lm-eval missing, an unknown task, a task file that does not parse."""


def task_yamls(include_path: str | Path) -> list[Path]:
    """The task YAMLs of a directory: as given, relative to the working directory, or shipped under configs/."""
    root = shipped_or_local(include_path)
    if not root.is_dir():
        raise TaskError(f"evaluate.tasks.include_path {root}: not a directory of lm-eval task YAMLs")
    return sorted(p for p in root.rglob("*.yaml") if p.is_file())


def _load_task(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict) or "task" not in spec:
        raise TaskError(f"{path}: an lm-eval task YAML needs a top-level 'task' field")
    return spec


def _data_files(spec: dict[str, Any], path: Path) -> dict[str, list[Path]]:
    """split -> the task's local data files, relative paths read from the YAML's directory."""
    files = ((spec.get("dataset_kwargs") or {}).get("data_files")) or {}
    if isinstance(files, (str, list)):
        files = {"train": files}
    out = {}
    for split, names in files.items():
        names = [names] if isinstance(names, str) else list(names)
        out[split] = [n if Path(n).is_absolute() else path.parent / n for n in map(Path, names)]
    return out


def resolved_include_path(include_path: str | Path, into: Path) -> Path:
    """A copy of the task directory's YAMLs with every local data file made absolute (lm-eval reads them from the cwd)."""
    into.mkdir(parents=True, exist_ok=True)
    for path in task_yamls(include_path):
        spec = _load_task(path)
        files = _data_files(spec, path)
        for split, paths in files.items():
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise TaskError(f"{path}: dataset_kwargs.data_files.{split}: {', '.join(missing)} not found")
        if files:
            spec["dataset_kwargs"]["data_files"] = {split: [str(p) for p in paths] for split, paths in files.items()}
        (into / path.name).write_text(yaml.safe_dump(spec, sort_keys=False))
    return into


def task_documents(include_path: str | Path) -> dict[str, list[str]]:
    """Every local task's examples as text (all string fields of a row joined): what decontamination compares against."""
    out: dict[str, list[str]] = {}
    for path in task_yamls(include_path):
        spec = _load_task(path)
        texts: list[str] = []
        for paths in _data_files(spec, path).values():
            for data in paths:
                for line in data.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        texts.append(" ".join(_strings(json.loads(line))))
        out[str(spec["task"])] = texts
    return out


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


PROPORTIONS = ("acc", "acc_norm", "exact_match", "mcc")  # a share of examples right: Wilson's interval, valid at 0% and 100% too


def wilson95(share: float, n: int) -> list[float]:
    z = 1.96
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 5), round(centre + half, 5)]


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's results -> {task: {metrics: {metric: {value, stderr, ci95}}, examples}}."""
    out: dict[str, Any] = {}
    samples = results.get("n-samples", {})
    for task, scores in results["results"].items():
        n = int(samples.get(task, {}).get("effective", 0))
        metrics: dict[str, Any] = {}
        for key, value in scores.items():
            name, _, filt = key.partition(",")
            stderr = scores.get(f"{name}_stderr,{filt}")
            if name.endswith("_stderr") or not isinstance(value, (int, float)) or not isinstance(stderr, (int, float)):
                continue  # not a metric (alias, sample_len: their "stderr" is N/A)
            if name in PROPORTIONS and n:
                ci95 = wilson95(float(value), n)
            else:
                ci95 = [round(float(value) - 1.96 * stderr, 5), round(float(value) + 1.96 * stderr, 5)]
            metrics[name] = {"value": round(float(value), 5), "stderr": round(float(stderr), 5), "ci95": ci95}
        out[task] = {"metrics": metrics, "examples": n}
    return out


def lm_eval_missing() -> str | None:
    """Why benchmarks cannot run here (lm-eval is an optional extra), or None."""
    import importlib.util

    return None if importlib.util.find_spec("lm_eval") else f"lm-evaluation-harness is not installed ({EXTRA_HINT})"


def run_tasks(export_dir: Path, params: TaskParams, device: str = "cpu") -> dict[str, Any]:
    """Score the export on every configured task; raises TaskError when lm-eval is missing or a task is unknown."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise TaskError(f"evaluate.tasks names {params.names}: lm-evaluation-harness is not installed ({EXTRA_HINT})") from None
    with tempfile.TemporaryDirectory(prefix="lmwright-tasks-") as tmp:
        include = str(resolved_include_path(params.include_path, Path(tmp))) if params.include_path else None
        manager = TaskManager(include_path=include) if include else TaskManager()
        unknown = [n for n in params.names if n not in manager.all_tasks]
        if unknown:
            where = f" or in {params.include_path}" if params.include_path else ""
            raise TaskError(f"evaluate.tasks.names: {', '.join(unknown)}: no such lm-eval task (not in its registry{where})")
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(export_dir), "dtype": "float32"},
            tasks=list(params.names),
            task_manager=manager,
            device=device,
            batch_size=params.batch_size,
            limit=params.limit,
            log_samples=False,
            bootstrap_iters=1000,
        )
    return summarize(results)


def task_gate_failures(tasks: dict[str, Any], minimums: dict[str, float]) -> list[str]:
    """Every task/metric below its minimum, or not scored at all, in words."""
    failures = []
    for key, minimum in minimums.items():
        task, _, metric = key.partition("/")
        score = (tasks.get(task) or {}).get("metrics", {}).get(metric or "acc")
        if score is None:
            failures.append(f"{key}: not scored (add the task to evaluate.tasks.names)")
        elif score["value"] < minimum:
            failures.append(f"{key} {score['value']:.3f} < min_task_scores {minimum}")
    return failures
