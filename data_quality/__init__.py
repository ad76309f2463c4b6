"""Great Expectations suites, one per stage, and the helpers stages call.

Public API (importing it does not import Great Expectations; the first validation does)::

    ValidationSettings      severity (fail | warn, per stage), docs_dir, ...
    DataQualityError        raised when a suite fails with severity fail
    validate_shard(stage, kept, rejected, params, settings, shard)
    validate_stage(stage, out_dir, shards, params, settings)
    validate_summary(stage, suite, summary, settings, label)   a summary of an output that is not documents

The document suites are described in data_quality/suites.py, those of token datasets in
data_quality/tokens.py, that of fine-tuning examples in data_quality/sft.py, the regexes behind the text checks
(e-mail, IPv4, phone, control characters) in data_quality/patterns.py.
"""

from __future__ import annotations

from lmwright.data_quality.settings import DataQualityError, Severity, ValidationSettings
from lmwright.data_quality.validate import validate_shard, validate_stage, validate_summary

__all__ = ["DataQualityError", "Severity", "ValidationSettings", "validate_shard", "validate_stage", "validate_summary"]
