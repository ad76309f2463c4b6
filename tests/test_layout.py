"""The layout: one import namespace, every package shipped, imports only going down the layers."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP = ("flows", "tasks", "models", "data_quality", "deployments")
# Lower layers never import higher ones, not even inside a function.
LAYERS = (
    "lmwright.data_quality",
    "lmwright.tasks.core",
    "lmwright.models",
    "lmwright.tasks.curate",
    "lmwright.tasks.train",
    "lmwright.tasks.refresh",
    "lmwright.flows",
    "lmwright.deployments",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["lmwright", *parts])


def layer_of(module: str) -> int | None:
    ranks = [i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    return ranks[-1] if ranks else None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def source_files() -> list[Path]:
    return sorted(p for top in TOP for p in (REPO / top).rglob("*.py"))


def test_every_package_folder_is_shipped_under_the_lmwright_namespace() -> None:
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {module_name(init) for top in TOP for init in (REPO / top).rglob("__init__.py")}
    assert folders - declared == set(), "add these packages to pyproject.toml's [tool.setuptools] packages"
    assert all(name.startswith("lmwright.") for name in declared)


def test_no_module_imports_the_old_top_level_names() -> None:
    old = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in source_files() + sorted((REPO / "tests").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
        for line, name in imported_modules(path)
        if name.split(".")[0] in TOP
    ]
    assert old == []


def test_imports_only_go_down_the_layers() -> None:
    upward = []
    for path in source_files():
        here = layer_of(module_name(path))
        for line, name in imported_modules(path):
            there = layer_of(name)
            if here is not None and there is not None and there > here:
                upward.append(f"{path.relative_to(REPO)}:{line} ({LAYERS[here]}) imports {name} ({LAYERS[there]})")
    assert upward == []


@pytest.mark.timeout(300)
def test_a_wheel_install_holds_only_lmwright_and_runs_from_it(tmp_path: Path) -> None:
    # The tests run on an editable install; a user's `pip install lmwright` gets the wheel.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=280,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("lmwright-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"lmwright"}

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import importlib.util, lmwright.flows.config as c, lmwright.tasks.curate.bias.filter as b\n"
        "assert c.CONFIG_DIR.is_relative_to(%r), c.CONFIG_DIR\n"
        "assert c.load_config(c.PipelineConfig, 'tiny').pretrain.max_steps > 0\n"
        "assert b.load_lexicons().toxicity\n"
        "assert all(importlib.util.find_spec(n) is None for n in %r)\n"
    ) % (str(site), TOP)
    # -I: only the wheel's files and site-packages, never this checkout or its editable finder
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ran = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); "
         "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n" + probe],
        capture_output=True, text=True, timeout=280, cwd=tmp_path, env=env,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
