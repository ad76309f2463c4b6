"""Benchmarks through lm-evaluation-harness on an export: local task directories, metrics with intervals, the gate."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lmwright.tasks.train.harness import TaskError, run_tasks, summarize, task_documents, task_gate_failures
from lmwright.tasks.train.params import TaskParams
from tests.test_generate import make_workdir

TASK_YAML = """task: shakespeare_word_order
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/lines.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: ""
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture()
def task_dir(tmp_path: Path, shared_data: Path) -> Path:
    """A local task from real text: a line of Shakespeare against the same words shuffled; data beside the YAML."""
    lines = [line for line in (shared_data / "tinyshakespeare" / "input.txt").read_text().splitlines() if len(line.split()) >= 7]
    rng = random.Random(0)
    rows = []
    for i, line in enumerate(lines[:24]):
        words = line.split()
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        choices = [line, " ".join(shuffled)][:: 1 if i % 2 else -1]
        rows.append({"choices": choices, "label": choices.index(line)})
    root = tmp_path / "tasks"
    (root / "data").mkdir(parents=True)
    (root / "data" / "lines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "shakespeare.yaml").write_text(TASK_YAML)
    return root


def test_a_local_task_runs_on_an_export_from_any_working_directory(task_dir: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("lm_eval")
    _, hf_dir, _ = make_workdir(tmp_path / "w")
    monkeypatch.chdir(tmp_path)  # the task's data file is relative to its YAML, not to here
    scores = run_tasks(hf_dir, TaskParams(names=["shakespeare_word_order"], include_path=str(task_dir), batch_size=4))
    acc = scores["shakespeare_word_order"]["metrics"]["acc"]
    assert scores["shakespeare_word_order"]["examples"] == 24
    assert 0 <= acc["value"] <= 1 and acc["stderr"] > 0 and acc["ci95"][0] < acc["value"] < acc["ci95"][1]


def test_an_unknown_task_is_named(task_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    _, hf_dir, _ = make_workdir(tmp_path / "w")
    with pytest.raises(TaskError, match=f"no_such_task: no such lm-eval task \\(not in its registry or in {task_dir}\\)"):
        run_tasks(hf_dir, TaskParams(names=["no_such_task"], include_path=str(task_dir)))


def test_a_task_whose_data_file_is_missing_names_the_yaml_and_field(task_dir: Path) -> None:
    (task_dir / "data" / "lines.jsonl").unlink()
    with pytest.raises(TaskError, match="shakespeare.yaml: dataset_kwargs.data_files.test: .*lines.jsonl not found"):
        from lmwright.tasks.train.harness import resolved_include_path

        resolved_include_path(task_dir, task_dir.parent / "resolved")


def test_task_documents_are_every_example_as_text(task_dir: Path) -> None:
    docs = task_documents(task_dir)["shakespeare_word_order"]
    assert len(docs) == 24 and all(len(d.split()) >= 14 for d in docs)  # both choices of each example


def test_the_shipped_tasks_parse_and_their_answers_are_in_range() -> None:
    docs = task_documents("configs/eval_tasks")
    assert set(docs) == {"lmwright_word_order", "lmwright_docstring_match"}
    for path in Path(__file__).parents[1].glob("configs/eval_tasks/*.jsonl"):
        for row in map(json.loads, path.read_text().splitlines()):
            assert 0 <= row["label"] < len(row["choices"]) and len(set(row["choices"])) == len(row["choices"])


def test_proportions_get_wilson_intervals_even_at_a_perfect_score() -> None:
    results = {"results": {"t": {"alias": "t", "acc,none": 1.0, "acc_stderr,none": 0.0, "sample_len,none": 30, "sample_len_stderr,none": "N/A"}},
               "n-samples": {"t": {"original": 30, "effective": 30}}}
    acc = summarize(results)["t"]["metrics"]
    assert list(acc) == ["acc"] and acc["acc"]["ci95"][1] == 1.0 and 0.85 < acc["acc"]["ci95"][0] < 0.9


def test_the_gate_reads_task_scores() -> None:
    tasks = {"t": {"metrics": {"acc": {"value": 0.55}}}}
    assert task_gate_failures(tasks, {"t/acc": 0.5}) == []
    assert task_gate_failures(tasks, {"t": 0.6}) == ["t 0.550 < min_task_scores 0.6"]
    assert task_gate_failures(tasks, {"u/acc": 0.1}) == ["u/acc: not scored (add the task to evaluate.tasks.names)"]
