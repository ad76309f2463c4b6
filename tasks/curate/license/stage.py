"""The license stage: consent first, then the license policy, one reason per dropped document.

Reasons (namespaced, fixed set, so the funnel stays readable; the detail names the license
or the registry entry):

* ``consent_withdrawn``      an opt-out entry matched (checked first; detail: entry + file:line)
* ``license_not_allowed``    a recognized SPDX license/expression outside the policy for this use
* ``license_unrecognized``   a declared license string that is no SPDX id and no pattern allows
* ``license_unknown``        no license at all and ``allow_unknown`` is off
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
from lmwright.tasks.core.stage import ShardStage
from lmwright.tasks.curate.license.optout import (
    REASON_WITHDRAWN,
    optout_matches,
    registry_of,
)
from lmwright.tasks.curate.license.policy import LicenseParams, license_decision

VERSION = "1"


def apply_license(docs: pl.DataFrame, params: LicenseParams) -> pl.DataFrame:
    """Add ``optout`` (matched registry entry or null), ``reason`` and ``detail``."""
    if isinstance(params, Mapping):
        params = LicenseParams.model_validate(params)
    optout = optout_matches(docs, registry_of(params)) if docs.height else pl.Series("optout", [], pl.String)
    # One policy decision per distinct license value (a handful per shard), joined back.
    values = docs["license"].unique().to_list() if docs.height else []
    decided = [(v, *license_decision(v, params)) for v in values]
    table = pl.DataFrame(decided, schema={"license": pl.String, "_lreason": pl.String, "_ldetail": pl.String},
                         orient="row")
    out = docs.with_columns(optout.alias("optout")).join(table, on="license", how="left", nulls_equal=True,
                                                         maintain_order="left")
    return out.with_columns(
        pl.when(pl.col("optout").is_not_null()).then(pl.lit(REASON_WITHDRAWN)).otherwise(pl.col("_lreason")).alias("reason"),
        pl.when(pl.col("optout").is_not_null())
        .then(pl.lit("opt-out registry entry ") + pl.col("optout"))
        .otherwise(pl.col("_ldetail"))
        .alias("detail"),
    ).drop("_lreason", "_ldetail")


LICENSE_STAGE = ShardStage(name="license", version=VERSION, apply=apply_license)
