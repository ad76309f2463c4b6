"""withdraw: consent withdrawn after a document was kept.

The license stage honors the opt-out registry for new documents. A corpus version is
immutable, so when an opt-out arrives for a document an earlier version kept, the next
refresh:

1. finds the current version's documents the registry now names (``find_withdrawn``);
2. re-filters each dataset holding any of them through the ``withdraw`` shard stage (the
   usual dataset contract: the dropped documents land in ``rejected/`` with reason
   ``consent_withdrawn`` and the registry entry, file and line as detail) and lists the
   filtered dataset in the new version instead of the old one (``withdraw_datasets``);
3. records them in ``<workdir>/refresh/withdrawn.parquet`` (cumulative, one row per document,
   rewritten whole) so later refreshes keep them out of the replay pool and the cross-version
   dedup index;
4. says which trained models still contain each one (``withdrawal_report``): weights cannot
   forget, so the corpus card of the version and the model card of every later export name
   them. A model contains a document when the document was in the train split of the tokens
   it was trained on, or when it was initialized from (continued pretraining, fine-tuning) a
   model that contains it; read from each model's own ``result.json`` and its tokens'
   document index, not from the refresh's bookkeeping, so models trained by ``lmwright run``
   count too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from data_quality import ValidationSettings
from tasks.dataset import DatasetRef, write_parquet
from tasks.energy import EnergySettings
from tasks.license import REASON_WITHDRAWN, LicenseParams, optout_matches, registry_of
from tasks.stage import ShardStage, run_shard_stage
from tasks.tokenize import DOCS_FILE

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
        raise ValueError("resolve the opt-out registry first (tasks.license.resolve_optouts)")
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
    cols = ["id", *(c for c in ("url", "uri") if c in names)]
    if registry.filter(pl.col("kind") == "sha256").height:
        cols.append("text")  # content hashes need the text; ids, URLs and domains do not
    return cols


def find_withdrawn(manifest: dict[str, Any] | None, params: LicenseParams) -> pl.DataFrame:
    """Documents of a corpus version that the registry names: id, optout, added_in, dataset (its position)."""
    registry = registry_of(params)
    found: list[pl.DataFrame] = []
    if manifest is None or not registry.height:
        return pl.DataFrame(schema={"id": pl.String, "optout": pl.String, "added_in": pl.String, "dataset": pl.Int32})
    for k, dataset in enumerate(manifest["datasets"]):
        for shard in dataset["shards"]:
            docs = pl.read_parquet(shard["path"], columns=_match_columns(Path(shard["path"]), registry))
            hit = docs.select("id", optout_matches(docs, registry).alias("optout")).filter(pl.col("optout").is_not_null())
            if hit.height:
                found.append(hit.with_columns(pl.lit(dataset["added_in"]).alias("added_in"), pl.lit(k, pl.Int32).alias("dataset")))
    if not found:
        return pl.DataFrame(schema={"id": pl.String, "optout": pl.String, "added_in": pl.String, "dataset": pl.Int32})
    return pl.concat(found)


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


# -- the cumulative record --------------------------------------------------------------------


def withdrawn_path(workdir: str | Path) -> Path:
    return Path(workdir) / "refresh" / WITHDRAWN_FILE


def read_withdrawn(workdir: str | Path) -> pl.DataFrame:
    path = withdrawn_path(workdir)
    return pl.read_parquet(path) if path.is_file() else pl.DataFrame(schema=WITHDRAWN_SCHEMA)


def record_withdrawn(workdir: str | Path, found: pl.DataFrame, version: str) -> pl.DataFrame:
    """Add ``found`` (withdrawn in ``version``) to the record; the first withdrawal of an id wins,
    so running the same refresh again writes the same file."""
    new = found.select("id", "optout", "added_in", pl.lit(version).alias("withdrawn_in"))
    merged = pl.concat([read_withdrawn(workdir), new]).unique("id", keep="first", maintain_order=True)
    write_parquet(merged, withdrawn_path(workdir))
    return merged


# -- which models still contain them ----------------------------------------------------------


def trained_models(workdir: str | Path) -> list[Path]:
    """Every finished training run under the workdir (pretrain and fine-tune), oldest first."""
    runs = [p.parent for p in (Path(workdir) / "models").glob("*/*/result.json") if (p.parent / "manifest.json").is_file()]
    return sorted(runs, key=lambda p: (p / "manifest.json").stat().st_mtime)


def _model_dir_of_checkpoint(checkpoint: str) -> str:
    return str(Path(checkpoint).resolve().parents[1])  # <model>/checkpoints/best


def _trained_on(tokens_dir: str | None, ids: pl.Series) -> set[str]:
    if not tokens_dir or not (Path(tokens_dir) / DOCS_FILE).is_file():
        return set()
    docs = pl.scan_parquet(Path(tokens_dir) / DOCS_FILE)
    schema = docs.collect_schema()
    docs = docs.filter(pl.col("split") == "train", pl.col("id").is_in(ids.implode()))
    if "repeats" in schema:
        docs = docs.filter(pl.col("repeats") > 0)
    if "offset" in schema:
        docs = docs.filter(pl.col("offset").is_not_null())
    return set(docs.select("id").collect()["id"].to_list())


def models_containing(workdir: str | Path, ids: Iterable[str]) -> dict[str, list[str]]:
    """model directory -> the given documents it still contains (models containing none left out)."""
    wanted = pl.Series("id", sorted(set(ids)), dtype=pl.String)
    contains: dict[str, set[str]] = {}
    if not wanted.len():
        return {}
    pending = trained_models(workdir)
    # A model's base may finish later on disk than the model when reruns touch it: resolve recursively.
    results = {str(p.resolve()): json.loads((p / "result.json").read_text()) for p in pending}

    def resolve(model: str, seen: tuple[str, ...] = ()) -> set[str]:
        if model in contains:
            return contains[model]
        result = results.get(model)
        if result is None or model in seen:
            return set()
        inside = _trained_on(result.get("tokens"), wanted)
        base = result.get("base") or (_model_dir_of_checkpoint(result["init_from"]) if result.get("init_from") else None)
        if base:
            inside |= resolve(str(Path(base).resolve()), (*seen, model))
        contains[model] = inside
        return inside

    for model in results:
        resolve(model)
    return {m: sorted(v) for m, v in contains.items() if v}


def withdrawal_report(workdir: str | Path) -> dict[str, Any] | None:
    """What the cards say: every withdrawn document and the trained models that still contain it."""
    withdrawn = read_withdrawn(workdir)
    if not withdrawn.height:
        return None
    by_model = models_containing(workdir, withdrawn["id"].to_list())
    holders: dict[str, list[str]] = {}
    for model, docs in by_model.items():
        for doc in docs:
            holders.setdefault(doc, []).append(model)
    documents = [{**row, "models": sorted(holders.get(row["id"], []))} for row in withdrawn.iter_rows(named=True)]
    return {"documents": documents, "models": {m: len(d) for m, d in sorted(by_model.items())}}


def render_withdrawals_markdown(report: dict[str, Any] | None, model: str | None = None, limit: int = 50) -> str:
    """The 'Consent withdrawn' section of a corpus card or model card (``model``: the card's own model)."""
    if not report:
        return ""
    docs = report["documents"]
    lines = ["## Consent withdrawn", ""]
    lines.append(
        f"{len(docs)} document(s) were removed from the corpus after their owners withdrew consent "
        "(opt-out registry). Trained weights cannot forget them: these models still contain some."
    )
    if model is not None:
        mine = report["models"].get(str(Path(model).resolve()), 0)
        lines += ["", f"**This model contains {mine} of them.**" if mine else "This model contains none of them."]
    lines += ["", "| model | withdrawn documents it contains |", "|---|---:|"]
    lines += [f"| {m} | {n} |" for m, n in report["models"].items()] or ["| (none) | 0 |"]
    lines += ["", "| document | opt-out entry | added in | withdrawn in | models containing it |", "|---|---|---|---|---:|"]
    for d in docs[:limit]:
        lines.append(f"| {d['id']} | {d['optout']} | {d['added_in']} | {d['withdrawn_in']} | {len(d['models'])} |")
    if len(docs) > limit:
        lines.append(f"| ... {len(docs) - limit} more in refresh/{WITHDRAWN_FILE} | | | | |")
    return "\n".join(lines) + "\n"


__all__ = [
    "WITHDRAW_STAGE",
    "apply_withdraw",
    "consent_params",
    "find_withdrawn",
    "models_containing",
    "read_withdrawn",
    "record_withdrawn",
    "render_withdrawals_markdown",
    "withdraw_datasets",
    "withdrawal_report",
    "withdrawn_path",
]
