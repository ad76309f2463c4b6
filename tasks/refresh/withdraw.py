"""withdraw: consent withdrawn after a document was kept.

The license stage honors the opt-out registry for new documents. A corpus version is
immutable, so when an opt-out arrives for a document an earlier version kept, the next
refresh:

1. finds the current version's documents the registry now names (``find_withdrawn``);
2. re-filters each dataset holding any of them through the ``withdraw`` shard stage (the
   usual dataset contract: the dropped documents land in ``rejected/`` with reason
   ``consent_withdrawn`` and the registry entry, file and line as detail) and lists the
   filtered dataset in the new version instead of the old one (``withdraw_datasets``);
3. records them, with every document withdrawn before, in the version's ``withdrawn.parquet``
   (``corpus/vNNNN/``, listed in its manifest), so later refreshes keep them out of the
   cross-version dedup index (their ids stay taken: ids are never reused);
4. says which trained models still contain each one (``withdrawal_report``): weights cannot
   forget, so the corpus card of the version and the model card of every later export name
   them. A model contains a document when the document was in the train split of the tokens
   it was trained on, or when it was initialized from (continued pretraining, fine-tuning) a
   model that contains it; read from each model's own ``result.json`` and its tokens'
   document index, not from the refresh's bookkeeping, so models trained by ``lmwright run``
   count too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from lmwright.data_quality import ValidationSettings
from lmwright.tasks.core.dataset import DatasetRef, write_parquet
from lmwright.tasks.core.energy import EnergySettings
from lmwright.tasks.curate.license.optout import REASON_WITHDRAWN, optout_matches, registry_of
from lmwright.tasks.curate.license.policy import LicenseParams
from lmwright.tasks.refresh.mix import packed_docs
from lmwright.tasks.refresh.versions import read_latest
from lmwright.tasks.core.stage import ShardStage, run_shard_stage
from lmwright.tasks.train.token_dataset import DOCS_FILE, TokenDatasetRef

VERSION = "1"
WITHDRAWN_FILE = "withdrawn.parquet"
WITHDRAWN_SCHEMA = {
    "id": pl.String,
    "optout": pl.String,  # the registry entry: 'url:example.com/a @ optout/x.txt:3'
    "added_in": pl.String,  # the corpus version that added the document
    "withdrawn_in": pl.String,  # the first version without it
}


def consent_params(license: LicenseParams) -> LicenseParams:
    """Only the registry part of resolved license params: a policy change must not re-filter old versions."""
    if not license.resolved():
        raise ValueError("resolve the opt-out registry first (tasks.curate.license.optout.resolve_optouts)")
    return LicenseParams(
        optout_paths=license.optout_paths,
        optout_url=license.optout_url,
        optout_sha256=license.optout_sha256,
        optout_snapshot=license.optout_snapshot,
    )


def apply_withdraw(docs: pl.DataFrame, params: LicenseParams) -> pl.DataFrame:
    """Drop the documents an opt-out entry names (``consent_withdrawn``, detail: the entry)."""
    matched = optout_matches(docs, registry_of(params)) if docs.height else pl.Series("optout", [], pl.String)
    return docs.drop([c for c in ("reason", "detail") if c in docs.columns]).with_columns(
        pl.when(matched.is_not_null()).then(pl.lit(REASON_WITHDRAWN)).alias("reason"),
        (pl.lit("opt-out registry entry ") + matched).alias("detail"),
    )


WITHDRAW_STAGE = ShardStage(name="withdraw", version=VERSION, apply=apply_withdraw)


def _match_columns(path: Path, registry: pl.DataFrame) -> list[str]:
    names = pl.read_parquet_schema(path)
    cols = ["id", *(c for c in ("url", "uri", "parent_id") if c in names)]
    if registry.filter(pl.col("kind") == "sha256").height:
        cols.append("text")  # content hashes need the text; ids, URLs and domains do not
    return cols


FOUND_SCHEMA = {"id": pl.String, "optout": pl.String, "added_in": pl.String, "dataset": pl.Int32}


def find_withdrawn(manifest: dict[str, Any] | None, params: LicenseParams) -> pl.DataFrame:
    """Documents of a corpus version that the registry names: id, optout, added_in, dataset (its position)."""
    registry = registry_of(params)
    found: list[pl.DataFrame] = []
    if manifest is None or not registry.height:
        return pl.DataFrame(schema=FOUND_SCHEMA)
    for k, dataset in enumerate(manifest["datasets"]):
        for shard in dataset["shards"]:
            docs = pl.read_parquet(shard["path"], columns=_match_columns(Path(shard["path"]), registry))
            hit = docs.select("id", optout_matches(docs, registry).alias("optout")).filter(pl.col("optout").is_not_null())
            if hit.height:
                found.append(hit.with_columns(pl.lit(dataset["added_in"]).alias("added_in"), pl.lit(k, pl.Int32).alias("dataset")))
    return pl.concat(found) if found else pl.DataFrame(schema=FOUND_SCHEMA)


def withdraw_datasets(
    workdir: str | Path,
    manifest: dict[str, Any],
    withdrawn: pl.DataFrame,
    params: LicenseParams,
    validation: ValidationSettings,
    energy: EnergySettings | None = None,
) -> list[DatasetRef | None]:
    """Per dataset of the version: its re-filtered copy (the withdraw stage's output), or None if untouched."""
    touched = set(withdrawn["dataset"].to_list())
    out: list[DatasetRef | None] = []
    for k, d in enumerate(manifest["datasets"]):
        if k not in touched:
            out.append(None)
            continue
        source = DatasetRef(d["stage"], d["fingerprint"], d["path"])
        out.append(run_shard_stage(workdir, WITHDRAW_STAGE, source, params, validation, energy))
    return out


# -- the record: every document withdrawn up to a version ------------------------------------


def read_record(path: str | Path | None) -> pl.DataFrame:
    """A version's record of withdrawn documents (empty for None)."""
    return pl.read_parquet(path) if path else pl.DataFrame(schema=WITHDRAWN_SCHEMA)


def committed_record(workdir: str | Path) -> str | None:
    """The record of the current corpus version, if any document was ever withdrawn."""
    latest = read_latest(workdir)
    return latest.get("withdrawn") if latest else None


def next_record(workdir: str | Path, previous: str | None, found: pl.DataFrame, version: str) -> str:
    """The previous version's record plus ``found`` (withdrawn in ``version``), written content-addressed
    under ``refresh/withdrawn/`` for this refresh to use; ``commit_version`` copies it into the version.
    A refresh killed and rerun with another registry writes another file, never a changed one."""
    new = found.select("id", "optout", "added_in", pl.lit(version).alias("withdrawn_in"))
    record = pl.concat([read_record(previous), new]).unique("id", keep="first", maintain_order=True)
    digest = hashlib.sha256(record.write_csv().encode()).hexdigest()[:20]
    path = Path(workdir) / "refresh" / "withdrawn" / f"{digest}.parquet"
    if not path.is_file():
        write_parquet(record, path)
    return str(path.resolve())


# -- which models still contain them ----------------------------------------------------------


def trained_models(workdir: str | Path) -> list[Path]:
    """Every finished training run under the workdir (pretrain and fine-tune)."""
    return sorted(p.parent for p in (Path(workdir) / "models").glob("*/*/result.json") if (p.parent / "manifest.json").is_file())


def _model_dir_of_checkpoint(checkpoint: str) -> str:
    return str(Path(checkpoint).resolve().parents[1])  # <model>/checkpoints/best


def _trained_on(tokens_dir: str | None, ids: pl.Series) -> set[str] | None:
    """The given documents in the train split of a model's tokens; None when that record is gone."""
    if not tokens_dir:
        return set()
    if not (Path(tokens_dir) / DOCS_FILE).is_file():
        return None
    docs = packed_docs(TokenDatasetRef.at(tokens_dir))
    return set(docs.filter(pl.col("split") == "train", pl.col("id").is_in(ids.implode()))["id"].to_list())


def models_containing(workdir: str | Path, ids: Iterable[str], unknown: set[str] | None = None) -> dict[str, list[str]]:
    """model directory -> the given documents it still contains (models containing none left out).

    Models whose training data record is gone (deleted tokens) cannot be checked: they are
    added to ``unknown`` (with every model initialized from them), never reported as clean."""
    wanted = pl.Series("id", sorted(set(ids)), dtype=pl.String)
    contains: dict[str, set[str]] = {}
    unknown = unknown if unknown is not None else set()
    if not wanted.len():
        return {}
    # memoized depth-first over the lineage: a model's base is resolved before the model itself
    results = {str(p.resolve()): json.loads((p / "result.json").read_text()) for p in trained_models(workdir)}

    def resolve(model: str, seen: tuple[str, ...] = ()) -> set[str]:
        if model in contains:
            return contains[model]
        result = results.get(model)
        if result is None or model in seen:
            return set()
        seen_here = _trained_on(result.get("tokens"), wanted)
        if seen_here is None:
            unknown.add(model)
        inside = seen_here or set()
        base = result.get("base") or (_model_dir_of_checkpoint(result["init_from"]) if result.get("init_from") else None)
        if base:
            base = str(Path(base).resolve())
            inside |= resolve(base, (*seen, model))
            if base in unknown or base not in results:  # a base we cannot read (deleted, another workdir)
                unknown.add(model)
        contains[model] = inside
        return inside

    for model in results:
        resolve(model)
    return {m: sorted(v) for m, v in contains.items() if v}


def withdrawal_report(workdir: str | Path, record: str | None = None) -> dict[str, Any] | None:
    """What the cards say: every withdrawn document (``record``; default: the current version's)
    and the trained models that still contain it."""
    withdrawn = read_record(record if record is not None else committed_record(workdir))
    if not withdrawn.height:
        return None
    unknown: set[str] = set()
    by_model = models_containing(workdir, withdrawn["id"].to_list(), unknown)
    holders: dict[str, list[str]] = {}
    for model, docs in by_model.items():
        for doc in docs:
            holders.setdefault(doc, []).append(model)
    documents = [{**row, "models": sorted(holders.get(row["id"], []))} for row in withdrawn.iter_rows(named=True)]
    return {"documents": documents, "models": {m: len(d) for m, d in sorted(by_model.items())}, "unknown": sorted(unknown)}


def render_withdrawals_markdown(
    report: dict[str, Any] | None, model: str | None = None, limit: int = 50, heading: str = "##"
) -> str:
    """The 'Consent withdrawn' section of a corpus card or model card (``model``: the card's own model)."""
    if not report:
        return ""
    docs = report["documents"]
    lines = [f"{heading} Consent withdrawn", ""]
    lines.append(
        f"{len(docs)} document(s) were removed from the corpus after their owners withdrew consent "
        "(opt-out registry). Trained weights cannot forget them: these models still contain some."
    )
    if model is not None:
        me = str(Path(model).resolve())
        mine = report["models"].get(me, 0)
        if me in report.get("unknown", []):
            lines += ["", f"**This model contains at least {mine} of them; the rest cannot be checked (training data record gone).**"]
        else:
            lines += ["", f"**This model contains {mine} of them.**" if mine else "This model contains none of them."]
    lines += ["", "| model | withdrawn documents it contains |", "|---|---:|"]
    lines += [f"| {m} | {n} |" for m, n in report["models"].items()] or ["| (none) | 0 |"]
    lines += [f"| {m} | unknown: its training data record is gone |" for m in report.get("unknown", [])]
    lines += ["", "| document | opt-out entry | added in | withdrawn in | models containing it |", "|---|---|---|---|---:|"]
    for d in docs[:limit]:
        lines.append(f"| {d['id']} | {d['optout']} | {d['added_in']} | {d['withdrawn_in']} | {len(d['models'])} |")
    if len(docs) > limit:
        lines.append(f"| ... {len(docs) - limit} more in the corpus version's {WITHDRAWN_FILE} | | | | |")
    return "\n".join(lines) + "\n"


__all__ = [
    "WITHDRAW_STAGE",
    "apply_withdraw",
    "consent_params",
    "find_withdrawn",
    "models_containing",
    "committed_record",
    "next_record",
    "read_record",
    "render_withdrawals_markdown",
    "withdraw_datasets",
    "withdrawal_report",
]
