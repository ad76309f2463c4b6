"""``lmwright publish``: an export to a Hugging Face Hub model repository, private unless asked otherwise.

Before anything leaves the machine the export is checked the way the Hub and ``transformers`` will read
it: the files a ``LlamaForCausalLM`` needs, a model card whose YAML header ``huggingface_hub`` parses
(licence, model-index with results), and every file the card links to. A dry run stops there and lists
what would be uploaded. The upload itself is one ``upload_folder`` call; the token is the one
``huggingface_hub`` finds (``HF_TOKEN``, or a ``hf auth login``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lmwright.tasks.core.errors import UserError

REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # markdown links and images: ](target) or ](target#anchor)


class PublishError(UserError):
    """An export that is not ready to share; the message names the file and the field."""


@dataclass(frozen=True)
class UploadPlan:
    export: Path
    files: list[str]  # relative to export, sorted
    bytes: int


def check_export(export: Path) -> UploadPlan:
    """Every problem that would make the Hub page or ``from_pretrained`` break, raised as one PublishError."""
    from huggingface_hub import ModelCard

    if not export.is_dir():
        raise PublishError(f"{export}: not a directory (give an export: W/exports/export/<fingerprint>/hf)")
    problems = [f"{export / name}: missing" for name in REQUIRED if not (export / name).is_file()]
    readme = export / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        try:
            card = ModelCard(text, ignore_metadata_errors=False)
        except Exception as e:  # the library raises ValueError or a YAML error for a bad header
            problems.append(f"{readme}: YAML header: {e}")
        else:
            if not card.data.license:
                problems.append(f"{readme}: YAML header: no license")
            if not card.data.eval_results:
                problems.append(f"{readme}: YAML header: model-index has no results")
            if not card.text.lstrip().startswith("# "):
                problems.append(f"{readme}: the card has no title")
        for target in sorted(set(LINK.findall(text))):
            if "://" not in target and not (export / target).is_file():
                line = text[: text.index(target)].count("\n") + 1
                problems.append(f"{readme}:{line}: links to {target}, which is not in the export")
    if problems:
        raise PublishError("export not ready to publish: " + "; ".join(problems))
    files = sorted(str(p.relative_to(export)) for p in export.rglob("*") if p.is_file() and not p.name.startswith("."))
    return UploadPlan(export, files, sum((export / f).stat().st_size for f in files))


def publish(export: Path, repo_id: str, public: bool = False, dry_run: bool = False) -> UploadPlan:
    """Check the export, then (unless dry_run) create the repository if needed and upload every file."""
    plan = check_export(export)
    if dry_run:
        return plan
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a dry run needs none: --dry-run)")
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=not public, exist_ok=True)
    api.upload_folder(folder_path=str(export), repo_id=repo_id, repo_type="model", allow_patterns=plan.files,
                      commit_message=f"lmwright export {export.parent.name}")
    return plan
