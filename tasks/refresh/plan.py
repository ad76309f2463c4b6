"""What a refresh decides before it works: the base model it continues from, the tokenizer it
keeps, the files it ingests (saved, so a rerun after a crash keeps to it), and the lock that lets
one refresh run per workdir.

On disk (``<workdir>`` is the pipeline's workdir)::

    refresh/pending.json           the plan of a refresh in progress (base version, base model,
                                   tokenizer); a rerun after a crash finishes the same plan
    refresh/.lock                  flock'ed while a refresh runs (released by the kernel on kill -9)
    refresh/tokenizers/<sha>.json  the tokenizer in use, content-addressed, so reusing it gives
                                   the same tokenize fingerprint every night
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path
from typing import Any, Iterator

from prefect import get_run_logger
from pydantic import BaseModel

from lmwright.tasks.core.dataset import file_sha256
from lmwright.tasks.core.files import atomic_copy, write_json
from lmwright.tasks.refresh.ledger import SourceScan, refresh_dir
from lmwright.tasks.train.token_dataset import TOKENIZER_FILE


class BaseModelInfo(BaseModel):
    """Where continued pretraining starts: the promoted model's pretrained weights and tokenizer."""

    promoted: str  # the promoted model's directory (pretrain or finetune)
    pretrained: str  # its pretrained base (itself unless it is a fine-tune)
    init_from: str  # <pretrained>/checkpoints/best
    tokenizer: str  # <pretrained>/tokenizer.json


def promoted_base(workdir: str | Path) -> BaseModelInfo | None:
    """The promoted model (promoted.json) and the pretrained checkpoint it grew from."""
    pointer = Path(workdir) / "promoted.json"
    if not pointer.is_file():
        return None
    model_dir = Path(json.loads(pointer.read_text())["model"])
    result_file = model_dir / "result.json"
    base = json.loads(result_file.read_text()).get("base") if result_file.is_file() else None
    pretrained = Path(base) if base else model_dir  # a fine-tune continues from its base, then is fine-tuned again
    return BaseModelInfo(
        promoted=str(model_dir),
        pretrained=str(pretrained),
        init_from=str(pretrained / "checkpoints" / "best"),
        tokenizer=str(pretrained / TOKENIZER_FILE),
    )


def content_addressed_tokenizer(workdir: str | Path, path: str | Path) -> Path:
    """A copy of a tokenizer named by its content: the same tokenizer gives the same fingerprints."""
    sha = file_sha256(Path(path))
    dest = refresh_dir(workdir) / "tokenizers" / f"{sha[:20]}.json"
    if not dest.is_file():
        atomic_copy(Path(path), dest)
    return dest


class RefreshPlan(BaseModel):
    """What a refresh decided before it started working: a rerun after a crash keeps to it."""

    base_version: str | None
    files: dict[str, str]  # new file key -> sha256
    base: BaseModelInfo | None
    tokenizer: str | None  # content-addressed tokenizer path; None: train one


def pending_path(workdir: str | Path) -> Path:
    return refresh_dir(workdir) / "pending.json"


def plan_refresh(workdir: str | Path, latest: dict[str, Any] | None, scan: SourceScan) -> RefreshPlan:
    """Reuse the pending plan when it is for the same base version and files; else make (and save) a new one."""
    base_version = latest["version"] if latest else None
    files = {k: scan.entries[k].sha256 for k in scan.new}
    pending = pending_path(workdir)
    if pending.is_file():
        plan = RefreshPlan.model_validate_json(pending.read_text())
        if plan.base_version == base_version and plan.files == files:
            get_run_logger().info("resuming the interrupted refresh of %d file(s)", len(files))
            return plan
    base = promoted_base(workdir)
    tokenizer_src = base.tokenizer if base else _latest_tokenizer(latest)
    tokenizer = str(content_addressed_tokenizer(workdir, tokenizer_src)) if tokenizer_src else None
    plan = RefreshPlan(base_version=base_version, files=files, base=base, tokenizer=tokenizer)
    write_json(pending, plan.model_dump(mode="json"))
    return plan


def _latest_tokenizer(latest: dict[str, Any] | None) -> str | None:
    """Without a promoted model, keep the tokenizer the corpus was last tokenized with."""
    for d in reversed(latest["datasets"] if latest else []):
        tokens = d.get("tokens") or d.get("tokens_before_withdrawal")
        if tokens and Path(tokens["path"], TOKENIZER_FILE).is_file():
            return str(Path(tokens["path"]) / TOKENIZER_FILE)
    return None


@contextlib.contextmanager
def refresh_lock(workdir: str | Path) -> Iterator[None]:
    """One refresh per workdir: an flock, which the kernel releases when the process dies (kill -9)."""
    path = refresh_dir(workdir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another refresh holds {path}; not starting a second one") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
