"""The license policy: which licenses a curate run accepts for which use.

``LicenseParams`` lists the licenses allowed per use (pretraining, finetuning) as ordered glob
patterns, last match wins, ``!`` negates: ``["CC-BY*", "!CC-BY-NC*"]`` allows BY and BY-SA and
rejects every NonCommercial variant. An SPDX expression is allowed when its ``AND`` terms all
are (for ``OR``: any alternative). The params also name the opt-out registry (tasks.curate.license.optout).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from lmwright.tasks.curate.license.spdx import (
    PUBLIC_DOMAIN,
    normalize_license,
    recognized,
    split_expression,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator

Use = Literal["pretraining", "finetuning"]

OPEN_LICENSES = [
    # permissive software licenses (docstrings, READMEs, code comments)
    "MIT", "MIT-0", "MIT-CMU", "BSD-1-Clause", "BSD-2-Clause", "BSD-3-Clause", "0BSD", "ISC", "Apache-2.0",
    "PSF-2.0", "Python-2.0", "CNRI-Python", "Zlib", "Unlicense", "BSL-1.0", "MPL-2.0", "X11", "NCSA", "HPND",
    "Unicode-3.0", "Unicode-DFS-2016", "UPL-1.0",
    # open text and data
    "CC0-1.0", "CC-PDDC", "CC-PDM-1.0", PUBLIC_DOMAIN, "PDDL-1.0", "ODC-By-1.0", "CDLA-Permissive-2.0",
    # Creative Commons BY and BY-SA of every version; NonCommercial and NoDerivatives are not open
    "CC-BY*", "!CC-BY-NC*", "!CC-BY-ND*",
]
DEFAULT_OPTOUT_DIR = "optout"


class LicenseParams(BaseModel):
    """Which licenses a curate run accepts, for which use, and whose consent was withdrawn."""

    model_config = ConfigDict(extra="forbid")

    use: Use = Field("pretraining", description="What this corpus is for; picks the allowed list below.")
    pretraining: list[str] = Field(
        default_factory=lambda: list(OPEN_LICENSES),
        description="Licenses allowed for pretraining: SPDX ids or glob patterns (case-insensitive), in order; "
        "the last pattern that matches decides, a leading '!' rejects (['CC-BY*', '!CC-BY-NC*']).",
    )
    finetuning: list[str] = Field(
        default_factory=lambda: list(OPEN_LICENSES),
        description="Licenses allowed for fine-tuning, same syntax as `pretraining`.",
    )
    allow_unknown: bool = Field(
        True,
        description="Keep documents without any license information (the card says how many). "
        "False rejects them with `license_unknown`.",
    )
    optout_paths: list[str] = Field(
        default_factory=lambda: [DEFAULT_OPTOUT_DIR],
        description="Opt-out registry files or directories, relative to the workdir (or absolute). One entry per "
        "line: `domain:`, `url:`, `id:` or `sha256:` prefix, or bare (64 hex = sha256, scheme or '/' = URL prefix, "
        "host name = domain, else id); '#' starts a comment. A missing path is an error, except the default `optout`.",
    )
    optout_url: str | None = Field(None, description="One more registry file at an fsspec URL (https://, s3://...).")
    optout_sha256: str | None = Field(
        None,
        description="Set by resolve_optouts: hash of the registry entries. It is part of the stage fingerprint, so "
        "a new opt-out reruns this stage and everything after it. Leave unset in configs.",
    )
    optout_snapshot: str | None = Field(
        None, exclude=True, description="Set by resolve_optouts: the registry snapshot file the stage reads."
    )

    @field_validator("pretraining", "finetuning")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not isinstance(p, str) or not p.strip("! ")]
        if bad:
            raise ValueError(f"empty license pattern(s): {bad}")
        return [p.strip() for p in v]

    def allowed_patterns(self) -> list[str]:
        return self.pretraining if self.use == "pretraining" else self.finetuning

    def allows(self, license_value: str | None) -> bool:
        """Whether the policy keeps a document with this license value (what the license suite asks)."""
        return license_decision(license_value, self)[0] is None

    def resolved(self) -> bool:
        return self.optout_sha256 is not None


def term_allowed(license_id: str, patterns: Iterable[str]) -> bool:
    """Ordered globs, last match wins, '!' negates; no match -> not allowed."""
    verdict = False
    lid = license_id.upper()
    for p in patterns:
        neg = p.startswith("!")
        if fnmatch.fnmatchcase(lid, p.lstrip("!").strip().upper()):
            verdict = not neg
    return verdict


def _eval(tokens: list[str], patterns: list[str]) -> bool:
    """SPDX expression: OR of ANDs, parentheses, 'X WITH exception' judged on X."""
    pos = 0

    def atom() -> bool:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            v = disj()
            if pos < len(tokens) and tokens[pos] == ")":
                pos += 1
            return v
        v = term_allowed(tok, patterns)
        if pos < len(tokens) and tokens[pos] == "WITH":
            pos += 2
        return v

    def conj() -> bool:
        nonlocal pos
        v = atom()
        while pos < len(tokens) and tokens[pos] == "AND":
            pos += 1
            v = atom() and v
        return v

    def disj() -> bool:
        nonlocal pos
        v = conj()
        while pos < len(tokens) and tokens[pos] == "OR":
            pos += 1
            v = conj() or v
        return v

    return disj() if tokens else False



def license_decision(value: str | None, params: LicenseParams) -> tuple[str | None, str | None]:
    """(reason, detail) for one license value under the policy; (None, None) keeps."""
    patterns = params.allowed_patterns()
    lic = normalize_license(value)
    if lic is None:
        if params.allow_unknown:
            return None, None
        return "license_unknown", f"no license information; allow_unknown is off ({params.use})"
    tokens = split_expression(lic) or [lic]
    if _eval(tokens, patterns):
        return None, None
    if recognized(lic):
        return "license_not_allowed", f"{lic} is not allowed for {params.use}"
    return "license_unrecognized", f"{lic!r} is no SPDX license we recognize and no {params.use} pattern allows it"



def policy_summary(params: LicenseParams, license_stats: Mapping[str, Any] | None = None,
                   unknown_kept: int | None = None) -> dict[str, Any]:
    """What the card says about the license policy and the opt-out registry."""
    return {
        "use": params.use,
        "allowed": params.allowed_patterns(),
        "allow_unknown": params.allow_unknown,
        "unknown_kept": unknown_kept,
        "optout_sha256": params.optout_sha256,
        "optout_sources": [*params.optout_paths, *([params.optout_url] if params.optout_url else [])],
        "rejected_by_reason": dict((license_stats or {}).get("rejected_by_reason", {})),
    }


def render_policy_markdown(summary: Mapping[str, Any]) -> str:
    lines = ["## Licenses and consent", ""]
    lines.append(f"Use: **{summary['use']}**. Allowed: `{', '.join(summary['allowed'])}` (last matching pattern wins).")
    if summary["allow_unknown"]:
        n = summary.get("unknown_kept")
        count = f"{n:,} documents" if n is not None else "documents"
        lines.append(f"Unknown licenses are **allowed**: {count} without license information were kept.")
    else:
        lines.append("Unknown licenses are **rejected** (`license_unknown`).")
    sha = summary.get("optout_sha256")
    lines.append(f"Opt-out registry: {', '.join(summary['optout_sources']) or 'none'}"
                 + (f" (entries hash `{sha[:12]}`)." if sha else "."))
    reasons = summary.get("rejected_by_reason") or {}
    if reasons:
        lines += ["", "| reason | documents |", "|---|---:|"] + [f"| {k} | {v:,} |" for k, v in sorted(reasons.items())]
    return "\n".join(lines) + "\n"

