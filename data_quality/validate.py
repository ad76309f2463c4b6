"""validate_shard / validate_stage: run the suites, then fail or warn with a readable summary.

The summary, like the Data Docs, never quotes document text (it reaches logs and the Prefect
database): a failed check on ``text`` names the ids of the documents, and identifiers are
shown with e-mails, phones and IP addresses masked (context.without_document_text).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import polars as pl

from lmwright.data_quality.patterns import mask_identifier
from lmwright.data_quality.settings import DataQualityError, ValidationSettings
from lmwright.data_quality.suites import accounting_suite, rejected_suite, shard_suite, signal_columns, unique_suite

_log = logging.getLogger("lmwright.data_quality")
_HASH_SEED = 0x6C6D77  # fixed: hashes are compared only within one process, but keep them reproducible


def validate_shard(
    stage: str,
    kept: pl.DataFrame,
    rejected: pl.DataFrame,
    params: Any,
    settings: ValidationSettings,
    shard: str,
) -> None:
    """Run ``stage``'s suite on one shard's kept documents and check its rejected rows.

    Raises DataQualityError (severity fail) or logs a warning (severity warn).
    """
    if not settings.enabled:
        return
    from lmwright.data_quality import context

    frame = kept
    note = ""
    if settings.sample_rows is not None and kept.height > settings.sample_rows:
        frame = kept.sample(settings.sample_rows, seed=0)
        note = f" (a sample of {frame.height:,} of {kept.height:,} rows)"
    licenses = kept["license"].drop_nulls().unique().sort().to_list() if stage == "license" and "license" in kept.columns else []
    name, build = shard_suite(stage, params, signal_columns(dict(kept.schema)), licenses)
    runs = [
        context.run_suite(
            context.get_suite(name, build), frame.to_pandas(), f"{stage}-{shard}", _result_format(frame)
        )
    ]
    if rejected.height:
        cols = [c for c in ("id", "reason", "stage") if c in rejected.columns]
        rej = rejected.select(cols)
        rname, rbuild = rejected_suite()
        runs.append(
            context.run_suite(
                context.get_suite(rname, rbuild), rej.to_pandas(), f"{stage}-{shard}-rejected", _result_format(rej)
            )
        )
    failed = [(label, run) for label, run in zip(("kept documents" + note, "rejected documents"), runs) if not run.success]
    if failed:
        _report(stage, f"shard {shard!r}", failed, settings, max_examples=settings.max_examples)


def validate_stage(
    stage: str,
    out_dir: Path,
    shards: Sequence[Any],
    params: Any,
    settings: ValidationSettings,
) -> None:
    """Whole-stage checks before the manifest: per-shard accounting, ids unique across shards
    (and, after dedup, text unique across shards). Raises or warns like validate_shard."""
    if not settings.enabled:
        return
    from lmwright.data_quality import context

    out_dir = Path(out_dir)
    hashed = ["id_hash"] + (["text_hash"] if stage == "dedup" else [])
    kept_on_disk: list[int | None] = []
    hashes: dict[str, list[pl.Series]] = {h: [] for h in hashed}
    for s in shards:
        path = out_dir / f"{s.shard}.parquet"
        if not path.is_file():
            kept_on_disk.append(None)
            continue
        cols = ["id", "text"] if "text_hash" in hashed else ["id"]
        part = pl.read_parquet(path, columns=cols)
        kept_on_disk.append(part.height)
        for h in hashed:
            # Only the 64-bit hashes stay in memory: 8 bytes per document, whatever its size.
            hashes[h].append(part[h.removesuffix("_hash")].hash(seed=_HASH_SEED))
        del part

    accounting = pl.DataFrame(
        {
            "shard": [s.shard for s in shards],
            "in": [s.docs_in for s in shards],
            "kept": [s.kept for s in shards],
            "rejected": [s.rejected for s in shards],
            "rejected_by_reason": [sum(s.reasons.values()) for s in shards],
            "kept_on_disk": kept_on_disk,
        },
        schema={
            "shard": pl.String,
            "in": pl.Int64,
            "kept": pl.Int64,
            "rejected": pl.Int64,
            "rejected_by_reason": pl.Int64,
            "kept_on_disk": pl.Int64,
        },
    )
    failed = []
    aname, abuild = accounting_suite()
    run = context.run_suite(
        context.get_suite(aname, abuild),
        accounting.to_pandas(),
        f"{stage}-accounting",
        {"result_format": "COMPLETE", "unexpected_index_column_names": ["shard"]},
    )
    if not run.success:
        failed.append(("per-shard accounting", run))

    frame = pl.DataFrame({h: (pl.concat(v) if v else pl.Series(h, [], pl.UInt64)) for h, v in hashes.items()})
    uname, ubuild = unique_suite(hashed)
    run = context.run_suite(context.get_suite(uname, ubuild), frame.to_pandas(), f"{stage}-unique", {"result_format": "SUMMARY"})
    notes: list[str] = []
    if not run.success:
        notes = _resolve_duplicates(out_dir, shards, frame, hashed)
        if notes:
            failed.append((f"all {len(shards)} shards ({frame.height:,} kept documents)", run))
        # else: every duplicate hash was a 64-bit collision between different values: not a failure.
    if failed:
        _report(stage, "whole stage", failed, settings, max_examples=settings.max_examples, notes=notes)


def validate_summary(
    stage: str,
    suite: tuple[str, Callable[[], list[Any]]],
    summary: pl.DataFrame,
    settings: ValidationSettings,
    label: str,
    notes: Sequence[str] = (),
    index_column: str | None = None,
) -> None:
    """Run a whole-output ``suite`` (data_quality/tokens.py, data_quality/sft.py) on ``summary``, a
    stage's small summary frame (one row per split, per example ...). Raises or warns like
    validate_shard; ``notes`` (readable details the stage found) follow the failed expectations.
    ``index_column`` names the column that identifies a failing row in the message."""
    if not settings.enabled:
        return
    from lmwright.data_quality import context

    name, build = suite
    fmt: dict[str, Any] = {"result_format": "COMPLETE"}
    if index_column is not None:
        fmt = {"result_format": "SUMMARY", "partial_unexpected_count": 5, "unexpected_index_column_names": [index_column]}
    run = context.run_suite(context.get_suite(name, build), summary.to_pandas(), f"{stage}-summary", fmt)
    if not run.success:
        _report(stage, "whole stage", [(label, run)], settings, max_examples=settings.max_examples, notes=notes)


def _resolve_duplicates(out_dir: Path, shards: Sequence[Any], frame: pl.DataFrame, hashed: list[str]) -> list[str]:
    """Turn duplicate hashes back into real duplicate values (with their shards); drop collisions."""
    notes = []
    for h in hashed:
        dup = frame.filter(pl.col(h).is_duplicated())[h].unique()
        if dup.is_empty():
            continue
        col = h.removesuffix("_hash")
        found = []
        for s in shards:
            path = out_dir / f"{s.shard}.parquet"
            if not path.is_file():
                continue
            part = pl.read_parquet(path, columns=sorted({"id", col}))
            hit = part.filter(part[col].hash(seed=_HASH_SEED).is_in(dup.implode()))
            found.append(hit.with_columns(pl.lit(s.shard).alias("_shard")))
        if not found:
            continue
        rows = pl.concat(found).filter(pl.col(col).is_duplicated())
        if rows.is_empty():
            continue
        if col == "id":
            groups = rows.group_by("id", maintain_order=True).agg(pl.col("_shard"))
            examples = [f"{mask_identifier(v)!r} in {', '.join(where)}" for v, where in groups.head(3).iter_rows()]
        else:  # the text itself is never quoted: its ids and shards find it
            groups = rows.group_by(col, maintain_order=True).agg(pl.col("_shard"), pl.col("id"))
            examples = [
                f"one text in {', '.join(where)} (ids {', '.join(repr(mask_identifier(i)) for i in ids)})"
                for _, where, ids in groups.head(3).iter_rows()
            ]
        notes.append(f"{groups.height:,} duplicated {col} value(s) across shards, e.g. " + "; ".join(examples))
    return notes


def _result_format(frame: pl.DataFrame) -> dict[str, Any]:
    fmt: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
    if "id" in frame.columns:
        fmt["unexpected_index_column_names"] = ["id"]
    return fmt


def _report(
    stage: str,
    where: str,
    failed: list[tuple[str, Any]],
    settings: ValidationSettings,
    max_examples: int,
    notes: Iterable[str] = (),
) -> None:
    from lmwright.data_quality import context

    severity = settings.severity_for(stage)
    lines = [f"data quality {'FAILED' if severity == 'fail' else 'warning'}: stage {stage!r}, {where}"]
    for label, run in failed:
        stats = run.result.statistics
        lines.append(
            f"  suite {run.suite.name!r} on {label}: {stats['unsuccessful_expectations']} of "
            f"{stats['evaluated_expectations']} expectations failed"
        )
        missing = {
            r.expectation_config.kwargs.get("column")
            for r in run.result.results
            if not r.success and r.expectation_config.type == "expect_column_to_exist"
        }
        for r in run.result.results:
            # A missing column is reported once, by expect_column_to_exist, not by every check on it.
            if not r.success and not (r.expectation_config.kwargs.get("column") in missing and _raised(r)):
                lines.append("    - " + _describe(r, max_examples))
    lines += [f"  {n}" for n in notes]
    docs = "not written (ValidationSettings.docs_dir is unset or build_docs='never')"
    if settings.docs_dir and settings.build_docs != "never":
        try:
            pages = [context.publish(run, settings.docs_dir) for _, run in failed]
            index = pages[0][0]
            docs = f"{index}" + "".join(f"\n    page: {page}" for _, page in pages if page)
        except Exception as exc:  # the summary matters more than the HTML
            docs = f"could not be written ({type(exc).__name__}: {exc})"
    lines.append(f"  Data Docs: {docs}")
    message = "\n".join(lines)
    if severity == "fail":
        raise DataQualityError(message)
    _logger().warning(message)


def _describe(r: Any, max_examples: int) -> str:
    cfg = r.expectation_config
    kw = cfg.kwargs
    target = kw.get("column") or kw.get("column_list") or [kw.get("column_A"), kw.get("column_B")]
    head = f"{cfg.type} (column {target!r}" if isinstance(target, str) else f"{cfg.type} (columns {target!r}"
    shown = {k: v for k, v in kw.items() if k in ("value_set", "min_value", "max_value", "type_") and v is not None}
    head += "".join(f", {k}={v!r}" for k, v in shown.items()) + ")"
    info = _raised(r)
    if info:
        msg = str(info.get("exception_message") or "").strip().splitlines()
        return f"{head}: could not run: {msg[-1] if msg else 'error'}"
    res = r.result or {}
    if "unexpected_count" in res and res.get("unexpected_count"):
        text = f"{head}: {res['unexpected_count']:,} of {res.get('element_count', 0):,} rows unexpected"
        index = res.get("partial_unexpected_index_list") or res.get("unexpected_index_list") or []
        # A text column's values were removed in context.run_suite: its examples are ids alone.
        values = res.get("partial_unexpected_list") or res.get("unexpected_list") or []
        examples: list[str] = []
        for i in range(max(len(values), len(index))):
            where = index[i] if i < len(index) and isinstance(index[i], dict) else {}
            # the row's identifier: id, shard, or the index column a summary suite names (never the checked column)
            key = next((k for k in ("id", "shard", *where) if k in where and k != target), None)
            label = "" if key is None or target == "id" else f"{key} {where[key]!r}"
            if i < len(values):
                ex = _short(values[i]) + (f" ({label})" if label else "")
            elif label:
                ex = label
            else:
                continue
            if ex not in examples:
                examples.append(ex)
            if len(examples) == max_examples:
                break
        if isinstance(target, str) and target.endswith("_hash"):
            examples = []  # hash values mean nothing to a reader; the resolved values follow below
        return text + (", e.g. " + "; ".join(examples) if examples else "")
    if "observed_value" in res:
        return f"{head}: observed {res['observed_value']!r}"
    if cfg.type == "expect_column_to_exist":
        return f"{head}: column is missing"
    return f"{head}: failed {res!r}"[:300]


def _raised(r: Any) -> dict[str, Any]:
    """The exception an expectation raised (GX keys it by metric id when several ran), or {}."""
    info = r.exception_info or {}
    if "raised_exception" not in info:
        info = next((v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")), {})
    return info if info.get("raised_exception") else {}


def _short(value: Any, width: int = 60) -> str:
    """A value for the message (never document text: context.run_suite removed it): long ones cut."""
    if not isinstance(value, str):
        return repr(value)
    return repr(value[:width]) + ("…" if len(value) > width else "")


def _logger() -> Any:
    """Prefect's run logger inside a flow or task run, else the ``lmwright.data_quality`` logger."""
    if "prefect" not in sys.modules:  # no run context can exist; importing Prefect would reconfigure logging
        return _log
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # MissingContextError outside a flow or task run
        return _log
