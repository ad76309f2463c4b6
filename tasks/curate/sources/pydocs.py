"""builtin:pydocs: real text that exists on every machine with Python (docstrings, read with ``ast``)."""

from __future__ import annotations

import ast
import functools
import hashlib
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import Iterator

from lmwright.tasks.curate.license.spdx import normalize_license
from lmwright.tasks.curate.sources.spec import BUILTIN_PYDOCS, BUILTIN_PYDOCS_PACKAGES, Record, Rejected, SourceFile, SourceSpec

PYDOCS_GROUP_FILES = 200


PYDOCS_ROOTS = {"stdlib": "stdlib", "packages": "purelib"}


def pydocs_units(spec: SourceSpec) -> list[SourceFile]:
    """The builtin corpus in stable groups: stdlib modules; or installed packages and their metadata."""
    kind = "stdlib" if spec.path == BUILTIN_PYDOCS else "packages"
    files = pydocs_files(kind)
    units = [
        SourceFile(spec, f"{kind}:{n}", f"{kind}/{n}", 0, 0.0, "pydocs")
        for n in range((len(files) + PYDOCS_GROUP_FILES - 1) // PYDOCS_GROUP_FILES)
    ]
    if kind == "packages":
        units.append(SourceFile(spec, "metadata:0", "metadata/0", 0, 0.0, "pydocs"))
    return units


@functools.lru_cache(maxsize=None)
def pydocs_files(kind: str) -> list[str]:
    root = Path(sysconfig.get_paths()[PYDOCS_ROOTS[kind]])
    if kind == "stdlib":
        return sorted(_python_files(root, skip_site=True))
    return sorted(_python_files(root, skip_site=False)) if root.is_dir() else []


def pydocs_fingerprint_input(path: str = BUILTIN_PYDOCS_PACKAGES) -> str:
    """What a builtin corpus depends on: the Python build; for the packages' corpus, the installed distributions too."""
    if path == BUILTIN_PYDOCS:
        return hashlib.sha256(f"{sys.version}|{sys.implementation.cache_tag}".encode()).hexdigest()
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    return hashlib.sha256("\n".join([sys.version, *dists]).encode()).hexdigest()


def _python_files(root: Path, skip_site: bool) -> list[str]:
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        parts = rel.parts
        if skip_site and (parts[0] in ("site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3")):
            continue
        if any(part.startswith(".") or part == "__pycache__" for part in parts):
            continue
        out.append(str(rel))
    return out


def read_pydocs(file: SourceFile) -> Iterator[Record | Rejected]:
    kind, _, group = file.path.partition(":")
    if kind == "metadata":
        yield from _metadata_descriptions()
        return
    root = Path(sysconfig.get_paths()[PYDOCS_ROOTS[kind]])
    files = pydocs_files(kind)
    start = int(group) * PYDOCS_GROUP_FILES
    for rel in files[start : start + PYDOCS_GROUP_FILES]:
        text = _module_docs(root / rel)
        if text is None:
            yield Rejected("ingest_read_error", f"{kind}/{rel}", "could not parse module source")
        elif text:
            # Package licenses live in their metadata, not per file: unknown stays unknown.
            yield Record(text=text, position=f"{kind}/{rel}", license="PSF-2.0" if kind == "stdlib" else None)


def _module_docs(path: Path) -> str | None:
    """The docstrings of a module, its classes and functions, in source order (no import)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return None
    chunks = []
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc.split()) >= 8:
                chunks.append(doc)
    seen: set[str] = set()
    unique = [c for c in chunks if not (c in seen or seen.add(c))]
    return "\n\n".join(unique)


def _metadata_descriptions() -> Iterator[Record | Rejected]:
    dists = sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower())
    seen: set[str] = set()
    for d in dists:
        name = d.metadata["Name"]
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        body = d.metadata.get_payload() if hasattr(d.metadata, "get_payload") else None  # type: ignore[union-attr]
        text = body or d.metadata.get("Description") or ""
        if isinstance(text, str) and text.strip():
            lic = d.metadata.get("License-Expression") or d.metadata.get("License")
            lic = normalize_license(lic) if lic and len(lic) < 64 and "\n" not in lic else None
            yield Record(text=text, position=f"metadata/{name}", license=lic)
