"""One ephemeral Great Expectations context per process, shared by every thread.

``import great_expectations`` costs seconds, so nothing here imports it at module
load; the first validation does. Shards validate concurrently in a thread pool, and a
GX pandas datasource is not safe to share between threads (its execution engine keeps
the loaded batch under an id made of datasource and asset names only, so two threads
validating through one datasource would read each other's frames). Each thread
therefore gets its own datasource; suites are shared, and everything that mutates the
context (adding datasources, suites, Data Docs sites, storing results, rendering
docs) happens under one lock.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from lmwright.data_quality.patterns import mask_identifier

_LOCK = threading.RLock()
_LOCAL = threading.local()


@dataclass
class _State:
    context: Any
    suites: dict[str, Any]
    sites: dict[str, str]  # docs_dir -> site name
    threads: int = 0


_STATE: _State | None = None


def get_context() -> Any:
    """The process-wide ephemeral GX context (built on first use: imports GX)."""
    return _state().context


def _state() -> _State:
    global _STATE
    if _STATE is None:
        with _LOCK:
            if _STATE is None:
                os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
                import great_expectations as gx

                import lmwright.data_quality.expectations  # noqa: F401  (registers the custom expectations)

                from great_expectations.data_context.types.base import ProgressBarsConfig

                gx_log = logging.getLogger("great_expectations")
                level = gx_log.level
                gx_log.setLevel(logging.WARNING)  # silence "Created temporary directory ... docs site"
                try:
                    context = gx.get_context(mode="ephemeral")
                finally:
                    gx_log.setLevel(level)
                # tqdm bars per validation would flood the Prefect logs and the terminal.
                context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
                # The default site writes relative to the working directory: we add our own per docs_dir.
                for name in list(context.list_data_docs_sites()):
                    context.delete_data_docs_site(name)
                _STATE = _State(context=context, suites={}, sites={})
    return _STATE


def get_suite(name: str, build: Callable[[], list[Any]]) -> Any:
    """The suite called ``name``, built once per process from ``build()``'s expectations."""
    state = _state()
    suite = state.suites.get(name)
    if suite is None:
        with _LOCK:
            suite = state.suites.get(name)
            if suite is None:
                import great_expectations as gx

                suite = state.context.suites.add(gx.ExpectationSuite(name=name, expectations=build()))
                state.suites[name] = suite
    return suite


def _thread_batch_definition() -> Any:
    """This thread's own pandas datasource -> dataframe asset -> whole-dataframe batch definition."""
    bd = getattr(_LOCAL, "batch_definition", None)
    if bd is None:
        state = _state()
        with _LOCK:
            state.threads += 1
            source = state.context.data_sources.add_pandas(name=f"lmwright-{state.threads}")
            asset = source.add_dataframe_asset(name="frame")
            bd = asset.add_batch_definition_whole_dataframe("whole")
        _LOCAL.batch_definition = bd
    return bd


@dataclass
class Run:
    """One finished validation: the GX result plus what Data Docs need to render it."""

    result: Any
    suite: Any
    batch_id: str
    run_name: str

    @property
    def success(self) -> bool:
        return bool(self.result.success)


def run_suite(suite: Any, frame: pd.DataFrame, run_name: str, result_format: dict[str, Any]) -> Run:
    """Validate ``frame`` against ``suite`` (no store write: successes cost no memory)."""
    from great_expectations.validator.v1_validator import Validator

    validator = Validator(
        batch_definition=_thread_batch_definition(),
        batch_parameters={"dataframe": frame},
        result_format=result_format,
    )
    result = validator.validate_expectation_suite(suite)
    for r in result.results:
        r.result = without_document_text(r.result or {}, r.expectation_config.kwargs.get("column"))
    return Run(result=result, suite=suite, batch_id=validator.active_batch_id, run_name=run_name)


# Columns holding a document's text: their values never leave the validation (the result
# reaches the error message, the Prefect database and the Data Docs HTML). Identifier
# columns may carry PII before the pii stage: their values are shown masked.
DOCUMENT_TEXT_COLUMNS = frozenset({"text"})
IDENTIFIER_COLUMNS = frozenset({"id", "uri", "url", "source", "dup_of", "dup_cluster"})
_VALUE_LISTS = ("partial_unexpected_list", "unexpected_list")
_COUNT_LISTS = ("partial_unexpected_counts", "unexpected_counts")
_INDEX_LISTS = ("partial_unexpected_index_list", "unexpected_index_list")


def _shown(column: Any, value: Any) -> Any:
    return mask_identifier(value) if column in IDENTIFIER_COLUMNS else value


def without_document_text(result: dict[str, Any], column: Any) -> dict[str, Any]:
    """A GX expectation result without any text column's values and with identifiers masked."""
    out = dict(result)
    text = column in DOCUMENT_TEXT_COLUMNS
    for key in _VALUE_LISTS:
        if key in out:
            out[key] = [] if text else [_shown(column, v) for v in out[key] or []]
    for key in _COUNT_LISTS:
        if key in out:
            out[key] = [] if text else [{**c, "value": _shown(column, c.get("value"))} for c in out[key] or []]
    for key in _INDEX_LISTS:
        if key in out:
            out[key] = [
                {k: _shown(k, v) for k, v in row.items() if k not in DOCUMENT_TEXT_COLUMNS}
                if isinstance(row, dict) else row
                for row in out[key] or []
            ]
    return out


def site_for(docs_dir: str | Path) -> str:
    """The Data Docs site writing under ``docs_dir`` (a filesystem site, added once)."""
    path = str(Path(docs_dir).resolve())
    state = _state()
    with _LOCK:
        name = state.sites.get(path)
        if name is None:
            name = "lmwright_" + hashlib.sha1(path.encode()).hexdigest()[:10]
            state.context.add_data_docs_site(
                site_name=name,
                site_config={
                    "class_name": "SiteBuilder",
                    "show_how_to_buttons": False,
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": path},
                    "site_index_builder": {
                        "class_name": "KeepPagesSiteIndexBuilder",
                        "module_name": "lmwright.data_quality.docs_index",
                    },
                },
            )
            state.sites[path] = name
    return name


def publish(run: Run, docs_dir: str | Path) -> tuple[Path, str | None]:
    """Render ``run`` into the Data Docs under ``docs_dir``; returns (index.html, the run's page URL).

    Only published results enter the context's (in-memory) result store: the index
    page reads them from there, so it links this process's pages; pages written by
    earlier processes stay on disk (see docs_index.py) but drop out of the index.
    """
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    state = _state()
    site = site_for(docs_dir)
    run_id = RunIdentifier(run_name=run.run_name, run_time=datetime.datetime.now(datetime.timezone.utc))
    suite_id = ExpectationSuiteIdentifier(name=run.suite.name)
    result_id = ValidationResultIdentifier(
        batch_identifier=run.batch_id, expectation_suite_identifier=suite_id, run_id=run_id
    )
    run.result.meta["run_id"] = run_id
    run.result.meta["validation_time"] = run_id.run_time
    with _LOCK:
        store = state.context.validation_results_store
        store.store_validation_results(
            suite_validation_result=run.result,
            suite_validation_result_identifier=result_id,
            expectation_suite_identifier=suite_id,
        )
        state.context.build_data_docs(site_names=[site], resource_identifiers=[result_id, suite_id])
        urls = state.context.get_docs_sites_urls(resource_identifier=result_id, site_name=site)
    page = urls[0]["site_url"] if urls else None
    return Path(docs_dir).resolve() / "index.html", page
