"""The nightly refresh: ingest only what is new, dedup it against every earlier corpus version,
continue pretraining from the promoted model on new data plus a replay sample of old data,
evaluate, promote if the gate passes, and commit a new immutable corpus version.

Crash safety: every step is a cached stage keyed by its output fingerprint, the plan (base
model, tokenizer) is saved before work starts, and the corpus version, its index file and
the ledger are written whole at the end (see tasks/refresh/versions.py and ledger.py), so a refresh killed anywhere
and run again finishes the same work and never writes a document twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
import polars as pl
from pydantic import BaseModel, Field

from lmwright.flows.config import PipelineConfig
from lmwright.flows.curate import curate
from lmwright.flows.forms import DEFAULT_PRESET, RefreshForm, RefreshSettingsForm, resolve_config, resolve_settings
from lmwright.flows.train import Evaluation, TrainedModels, evaluate_flow, finetune
from lmwright.models.checkpoint import load_config
from lmwright.tasks.core.dataset import DatasetRef, file_sha256, is_complete
from lmwright.tasks.train.carbon_window import wait_for_window
from lmwright.models.run import ModelRef
from lmwright.tasks.train.modeling import evaluate_model, evaluation_work, model_work, pretrain_model
from lmwright.tasks.refresh.ledger import Ledger, ledger_path, new_source_specs, repair_ledger, scan_sources, write_ledger
from lmwright.tasks.refresh.mix import run_mix
from lmwright.tasks.refresh.plan import RefreshPlan, content_addressed_tokenizer, pending_path, plan_refresh, refresh_lock
from lmwright.tasks.refresh.previous_dedup import REASON_ID, REASON_PREVIOUS, index_params_of, run_previous_dedup
from lmwright.tasks.refresh.settings import RefreshSettings
from lmwright.tasks.refresh.versions import commit_version, dataset_entry, next_version, read_latest
from lmwright.tasks.curate.sources import SourceInput
from lmwright.tasks.curate.license.optout import resolve_optouts
from lmwright.tasks.curate.license.policy import LicenseParams
from lmwright.tasks.core.results import PERSISTED_RESULTS
from lmwright.tasks.train.token_dataset import TOKENIZER_FILE, TokenDatasetRef
from lmwright.tasks.train.tokenize import TokenizeParams, run_tokenize
from lmwright.tasks.refresh.withdraw import (
    consent_params,
    find_withdrawn,
    next_record,
    render_withdrawals_markdown,
    withdraw_datasets,
    withdrawal_report,
)

REPORT_KEY = "refresh-report"
NOTHING_NEW = "nothing new"  # how a refresh that adds nothing starts its message


class RefreshResult(BaseModel):
    """What one refresh did, in numbers and one sentence."""

    version: str | None = Field(description="The corpus version current after this refresh (None: no version yet).")
    new_files: int = Field(description="Source files new or changed since the last successful refresh.")
    new_docs_kept: int = Field(0, description="New unique documents added to the corpus.")
    rejected_previous_version: int = Field(0, description="New documents that duplicate a document of an earlier version.")
    withdrawn: int = Field(0, description="Documents of the last version whose owners withdrew consent since: left out of this one.")
    corpus_docs: int = Field(0, description="Documents in the current corpus version.")
    model: str | None = Field(None, description="The model this refresh trained (None when nothing was trained).")
    init_from: str | None = Field(None, description="The checkpoint it continued from (None: trained from scratch).")
    promoted: bool = Field(False, description="Whether the new model was promoted.")
    reasons: list[str] = Field(default_factory=list, description="Why it was not promoted.")
    message: str


@flow(name="refresh", log_prints=True, persist_result=True, **PERSISTED_RESULTS)
def refresh(
    config: RefreshForm | None = None,
    settings: RefreshSettingsForm | None = None,
    preset: str | None = DEFAULT_PRESET,
    workdir: str | None = None,
    sources: list[SourceInput] | None = None,
) -> RefreshResult:
    """Nightly: new files -> curate -> dedup against earlier versions -> tokenize -> replay mix ->
    continued pretraining -> evaluate/promote -> commit corpus version.

    Args:
        config: What this run changes in the preset; an empty field keeps the preset's value. A full config works too.
        settings: Replay, cross-version dedup and promotion of this refresh; empty fields keep the preset's
            refresh section. The nightly schedule is the deployment's, not a run's.
        preset: A preset name (tiny, small, gpt2-124m) or a YAML file; none: every field's model default.
        workdir: Directory for corpus versions, datasets, models and reports; empty: the preset's.
        sources: Paths, directories, fsspec URLs (a string is a path); new files in them are ingested.
    """
    config = resolve_config(PipelineConfig, config, preset, workdir, sources)
    settings = resolve_settings(config, settings)
    config = config.model_copy(update={"workdir": str(Path(config.workdir).resolve())})
    workdir, checks = config.workdir, config.validation
    logger = get_run_logger()

    with refresh_lock(workdir):
        latest = read_latest(workdir)
        ledger = repair_ledger(workdir, latest)
        scan = scan_sources(config.ingest.sources, ledger, settings.trust_mtime)
        consent = consent_params(resolve_optouts(config.license, workdir))
        withdrawn = find_withdrawn(latest, consent)
        if not scan.new and not withdrawn.height:
            pending_path(workdir).unlink(missing_ok=True)  # a plan left by a run killed after its commit
            message = f"{NOTHING_NEW}: {len(scan.entries)} source file(s) unchanged since {ledger.version or 'the last refresh'}"
            logger.info(message)
            return _result(latest, 0, message)
        plan = plan_refresh(workdir, latest, scan)
        logger.info("%d new or changed file(s) since %s", len(scan.new), latest["version"] if latest else "the start")

        # Consent withdrawn since the last version: those documents leave the corpus (and the replay pool)
        base, record = withdraw_documents(workdir, config, latest, withdrawn, consent)
        committed = Ledger(
            version=latest["version"] if latest else None,
            files={**ledger.files, **{k: scan.entries[k] for k in scan.new}},
        )
        n_kept = n_prev = n_id = 0
        if scan.new:
            # Extract + transform: only the new files, deduplicated among themselves
            specs = new_source_specs(config.ingest.sources, scan)
            curated = curate(config.model_copy(update={"ingest": config.ingest.model_copy(update={"sources": specs})}))
            # ... and against everything earlier versions kept
            kept, index_part = run_previous_dedup(
                workdir, curated.corpus, config.dedup, settings.threshold, base, checks, withdrawn=record
            )
            stats = kept.stats()
            n_kept, n_prev = stats["kept"], stats["rejected_by_reason"].get(REASON_PREVIOUS, 0)
            n_id = stats["rejected_by_reason"].get(REASON_ID, 0)
        if n_kept == 0 and not withdrawn.height:
            write_ledger(ledger_path(workdir), committed)  # the files are seen; the corpus is unchanged
            pending_path(workdir).unlink(missing_ok=True)
            message = f"{NOTHING_NEW}: {len(scan.new)} new file(s), no new unique documents ({n_prev} already in the corpus)"
            logger.info(message)
            return _result(latest, len(scan.new), message, rejected=n_prev)

        info: dict[str, Any] = {
            "new_files": scan.new, "kept": n_kept, "rejected_previous_version": n_prev, "rejected_previous_id": n_id,
            "withdrawn": withdrawn.height, "model": None, "init_from": None, "promoted": False, "reasons": [],
        }
        added, index_file = None, None
        if n_kept:
            # Train: new tokens + replay of old ones, continuing from the promoted model
            tokens, new_tokens = tokenize_and_mix(workdir, config, settings, plan, kept, base)
            models, init_from = continue_training(workdir, config, settings, plan, tokens)
            evaluation = evaluate_refresh(config, settings, plan, models, curated.card, record)
            info |= {
                "curated": curated.corpus.path, "stages": {k: v.path for k, v in curated.stages.items()}, "card": curated.card,
                "tokens": tokens.path, "model": models.final.path, "pretrained": models.pretrained and models.pretrained.path,
                "init_from": init_from,
                "promoted": evaluation.promoted, "reasons": evaluation.reasons,
            }
            added, index_file = dataset_entry(kept, "", new_tokens), Path(index_part["path"])

        # Load: commit the version (index file, ledger snapshot, card, manifest, then latest.json)
        report = withdrawal_report(workdir, record) if record else None
        manifest = commit_version(
            workdir, base, added, index_file, index_params_of(config.dedup), committed, info,
            card=corpus_card(base, added, report), withdrawn=record,
        )
        pending_path(workdir).unlink(missing_ok=True)

    message = _message(manifest, info)
    logger.info(message)
    _publish(manifest, message, report)
    return RefreshResult(
        version=manifest["version"],
        new_files=len(scan.new),
        new_docs_kept=n_kept,
        rejected_previous_version=n_prev,
        withdrawn=withdrawn.height,
        corpus_docs=manifest["rows"],
        model=info["model"],
        init_from=info["init_from"],
        promoted=info["promoted"],
        reasons=info["reasons"],
        message=message,
    )


def withdraw_documents(
    workdir: str, config: PipelineConfig, latest: dict[str, Any] | None, withdrawn: pl.DataFrame, consent: LicenseParams
) -> tuple[dict[str, Any] | None, str | None]:
    """``latest`` as the next version starts from, and the record of every document withdrawn so far.

    Each dataset holding a withdrawn document is replaced by its re-filtered copy; its token
    arrays are dropped, so the replay pool is encoded again without them (its tokenizer stays
    on record for the next plan)."""
    previous = latest.get("withdrawn") if latest else None
    if latest is None or not withdrawn.height:
        return latest, previous
    version = next_version(latest)
    record = next_record(workdir, previous, withdrawn, version)
    refiltered = withdraw_datasets(workdir, latest, withdrawn, consent, config.validation, config.energy)
    datasets = [
        d if ref is None else {
            **dataset_entry(ref, d["added_in"], None),
            "withdrawn_from": d["path"],
            "tokens_before_withdrawal": d.get("tokens") or d.get("tokens_before_withdrawal"),
        }
        for d, ref in zip(latest["datasets"], refiltered)
    ]
    get_run_logger().warning(
        "consent withdrawn for %d document(s): %s leaves them out; models trained on them still contain them "
        "(see the version's card)", withdrawn.height, version,
    )
    return {**latest, "datasets": datasets, "rows": sum(d["rows"] for d in datasets)}, record


def corpus_card(base: dict[str, Any] | None, added: dict[str, Any] | None, withdrawals: dict[str, Any] | None) -> str:
    """The version's card: its datasets and, if any, the withdrawn documents and the models that still contain them."""
    datasets = [*(base["datasets"] if base else []), *([{**added, "added_in": "this version"}] if added else [])]
    lines = ["# Corpus version", "", "| added in | documents | dataset |", "|---|---:|---|"]
    lines += [f"| {d['added_in']} | {d['rows']:,} | {d['path']} |" for d in datasets]
    lines += ["", f"{sum(d['rows'] for d in datasets):,} documents in all.", ""]
    return "\n".join(lines) + ("\n" + render_withdrawals_markdown(withdrawals) if withdrawals else "")


def _message(manifest: dict[str, Any], info: dict[str, Any]) -> str:
    parts = [f"{manifest['version']}: {len(info['new_files'])} new file(s), {info['kept']} new document(s) kept, "
             f"{info['rejected_previous_version']} duplicate(s) of earlier versions rejected"]
    if info["withdrawn"]:
        parts.append(f"{info['withdrawn']} document(s) withdrawn (consent)")
    parts.append(f"corpus {manifest['rows']} documents")
    if info["model"] is None:
        parts.append("no model trained (no new documents)")
    else:
        verdict = "promoted" if info["promoted"] else "not promoted (" + "; ".join(info["reasons"]) + ")"
        parts.append(f"model {'continued from ' + info['init_from'] if info['init_from'] else 'trained from scratch'}, {verdict}")
    return "; ".join(parts)


def tokenize_and_mix(
    workdir: str,
    config: PipelineConfig,
    settings: RefreshSettings,
    plan: RefreshPlan,
    kept: DatasetRef,
    latest: dict[str, Any] | None,
) -> tuple[TokenDatasetRef, TokenDatasetRef]:
    """Tokenize the new documents with the model's tokenizer, then mix in a replay sample: (mix, new tokens)."""
    params = config.tokenize
    if plan.tokenizer is not None:
        params = params.model_copy(update={"tokenizer_path": plan.tokenizer})
    new_tokens = run_tokenize(workdir, kept, params, config.validation, config.energy)
    tokenizer_sha = file_sha256(new_tokens.dir / TOKENIZER_FILE)
    old: list[TokenDatasetRef] = []
    for d in latest["datasets"] if latest else []:
        if d["rows"] == 0:  # every document of it was withdrawn: nothing to replay
            continue
        t = d.get("tokens")
        if t and t["tokenizer_sha256"] == tokenizer_sha and is_complete(t["path"]):
            old.append(TokenDatasetRef.at(t["path"]))
        else:  # another tokenizer (or its arrays were deleted): encode that version's documents again (cached)
            cas = content_addressed_tokenizer(workdir, new_tokens.dir / TOKENIZER_FILE)
            again = TokenizeParams(**{**config.tokenize.model_dump(), "tokenizer_path": str(cas)})
            old.append(run_tokenize(workdir, DatasetRef(d["stage"], d["fingerprint"], d["path"]), again, config.validation, config.energy))
    block = _block_size(config, plan, new_tokens)
    return run_mix(workdir, new_tokens, old, settings, block, config.validation), new_tokens


def _block_size(config: PipelineConfig, plan: RefreshPlan, tokens: TokenDatasetRef) -> int:
    if plan.base is not None:
        return int(load_config(Path(plan.base.init_from))["block_size"])
    return config.pretrain.model.build(tokens.meta()["vocab_size"]).block_size


def continue_training(
    workdir: str, config: PipelineConfig, settings: RefreshSettings, plan: RefreshPlan, tokens: TokenDatasetRef
) -> tuple[TrainedModels, str | None]:
    """Continued pretraining from the plan's base checkpoint (scratch without one), then fine-tuning as configured."""
    overrides = {k: v for k, v in (("max_steps", settings.max_steps), ("lr", settings.lr)) if v is not None}
    params = config.pretrain.model_copy(update=overrides)
    init_from = plan.base.init_from if plan.base else None
    if init_from is not None and not Path(init_from).exists():
        raise FileNotFoundError(f"the promoted model's checkpoint {init_from} is gone: cannot continue from it")
    work = model_work(workdir, "pretrain", {"train": params, "init_from": init_from}, [tokens.fingerprint])
    if settings.carbon_window and not work.done():
        wait_for_window(settings.carbon_window)  # choose when to train: Paused in the UI until the window opens
    pretrained = pretrain_model(work, tokens, params, init_from=init_from, energy=config.energy)
    models = TrainedModels(tokens=tokens, pretrained=pretrained)
    if config.finetune.enabled:
        sft, finetuned = finetune(config, tokens, pretrained)
        models = models.model_copy(update={"finetuned": finetuned, "sft": sft})
    return models, init_from


def evaluate_refresh(
    config: PipelineConfig,
    settings: RefreshSettings,
    plan: RefreshPlan,
    models: TrainedModels,
    card: str,
    withdrawn: str | None = None,
) -> Evaluation:
    """The evaluate flow (gate, export, promote); first, the new model must not do worse than the
    promoted one on the same held-out tokens (``max_regression``), else it is not exported."""
    regression = _regression(config, settings, plan, models)
    if regression:
        get_run_logger().warning("not promoted (%s); the promoted model stays %s", regression, plan.base.promoted)  # type: ignore[union-attr]
        evaluation = evaluate_flow(config, models, card, export=False, withdrawn=withdrawn)
        return evaluation.model_copy(update={"promoted": False, "reasons": [regression]})
    return evaluate_flow(config, models, card, export=True, withdrawn=withdrawn)


def _regression(config: PipelineConfig, settings: RefreshSettings, plan: RefreshPlan, models: TrainedModels) -> str | None:
    if settings.max_regression is None or plan.base is None or not Path(plan.base.promoted).is_dir():
        return None
    tokens, sft, new, old = models.tokens, models.sft, models.final, ModelRef.at(plan.base.promoted)
    # evaluate_flow then finds the new model's evaluation in the cache: the same work
    new_m = evaluate_model(evaluation_work(config.workdir, new, tokens, config.evaluate), new, tokens, sft, config.evaluate)
    old_work = evaluation_work(config.workdir, old, tokens, config.evaluate, name="promoted")
    old_m = evaluate_model(old_work, old, tokens, sft, config.evaluate)
    if new_m["val_loss"] > old_m["val_loss"] + settings.max_regression:
        return (
            f"val_loss {new_m['val_loss']:.4f} on this refresh's held-out tokens is worse than the promoted model's "
            f"{old_m['val_loss']:.4f} (max_regression {settings.max_regression})"
        )
    return None


def _result(latest: dict[str, Any] | None, new_files: int, message: str, rejected: int = 0) -> RefreshResult:
    return RefreshResult(
        version=latest["version"] if latest else None,
        new_files=new_files,
        rejected_previous_version=rejected,
        corpus_docs=latest["rows"] if latest else 0,
        message=message,
    )


def _publish(manifest: dict[str, Any], message: str, withdrawals: dict[str, Any] | None) -> None:
    info = manifest["refresh"]
    lines = [
        f"# Corpus {manifest['version']}",
        "",
        message,
        "",
        "| | |",
        "|---|---|",
        f"| new files | {len(info['new_files'])} |",
        f"| new documents kept | {info['kept']} |",
        f"| duplicates of earlier versions | {info['rejected_previous_version']} |",
        f"| id clashes with earlier versions | {info['rejected_previous_id']} |",
        f"| withdrawn (consent) | {info['withdrawn']} |",
        f"| corpus documents | {manifest['rows']} |",
        f"| model | {info['model'] or 'none trained'} |",
        f"| continued from | {info['init_from'] or 'scratch'} |",
        f"| promoted | {info['promoted']} |",
    ]
    if withdrawals:
        lines += ["", render_withdrawals_markdown(withdrawals)]
    create_markdown_artifact(markdown="\n".join(lines), key=REPORT_KEY, description="The last refresh")


if __name__ == "__main__":
    print(refresh().message)
