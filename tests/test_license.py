"""License detection, the use policy and the opt-out registry (tasks/curate/license/)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import polars as pl
import pytest

from lmwright.tasks.core.dataset import fingerprint, split_decisions
from lmwright.tasks.curate.license.optout import content_hash, parse_optout_line, resolve_optouts
from lmwright.tasks.curate.license.policy import LicenseParams
from lmwright.tasks.curate.license.spdx import cc_markers, license_from_record, normalize_license
from lmwright.tasks.curate.license.stage import LICENSE_STAGE, apply_license
from lmwright.tasks.curate.sources.fields import url_from_record

CC_FILE = "web/cc_warc_2019_07_cclicensed_pages.jsonl"
NO_REGISTRY = {"optout_paths": []}


def docs(rows: list[dict]) -> pl.DataFrame:
    base = {"id": None, "text": "", "source": "s", "uri": None, "license": None}
    return pl.DataFrame([{**base, **r} for r in rows], schema={
        "id": pl.String, "text": pl.String, "source": pl.String, "uri": pl.String, "license": pl.String})


def reasons(out: pl.DataFrame) -> dict[str, str | None]:
    return dict(zip(out["id"].to_list(), out["reason"].to_list()))


# --- normalization and detection -------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, spdx",
    [
        ("MIT License", "MIT"),
        ("mit", "MIT"),
        ("Apache 2.0", "Apache-2.0"),
        ("Apache License, Version 2.0", "Apache-2.0"),
        ("Python Software Foundation License", "PSF-2.0"),
        ("PSF-2.0", "PSF-2.0"),
        ("CC BY-SA 3.0", "CC-BY-SA-3.0"),
        ("cc-by-nc-4.0", "CC-BY-NC-4.0"),
        ("https://creativecommons.org/licenses/by-nc-nd/3.0/de/", "CC-BY-NC-ND-3.0"),
        ("Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International", "CC-BY-NC-SA-4.0"),
        ("CC0", "CC0-1.0"),
        ("Public Domain", "LicenseRef-public-domain"),
        ("ODC-BY", "ODC-By-1.0"),
        ("MIT OR Apache-2.0", "MIT OR Apache-2.0"),
        ("mpl-2.0 AND (Apache 2.0 OR MIT License)", "MPL-2.0 AND (Apache-2.0 OR MIT)"),
        (["MIT", "Apache 2.0"], "Apache-2.0 AND MIT"),
        ("BSD", "BSD"),  # ambiguous: kept as written, never guessed into BSD-3-Clause
        ("Dual License", "Dual License"),
        ("unknown", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_license(raw: object, spdx: str | None) -> None:
    assert normalize_license(raw) == spdx


def test_license_from_record_fields_and_markers() -> None:
    assert license_from_record({"text": "x", "license": "MIT License"}) == "MIT"
    assert license_from_record({"text": "x", "metadata": {"license": "CC BY 4.0"}}) == "CC-BY-4.0"
    assert license_from_record({"text": "x"}) is None
    assert license_from_record({"text": "x", "license": ""}) is None
    dolma = {"attributes": {"cc_re__cc_re__cc_by_sa_3_0_it": [[1, 2, 1.0]], "cc_re__cc_re__cc_by_nc_4_0": []}}
    assert cc_markers(dolma) == ["cc_re__cc_re__cc_by_sa_3_0_it"]  # an empty span list is no marker
    assert license_from_record(dolma) == "CC-BY-SA-3.0"
    several = {"attributes": {"cc_re__cc_re__cc_by_sa_3_0": [[1, 2, 1.0]],
                              "cc_re__cc_re__cc_publicdomain_zero_1_0": [[3, 4, 1.0]]}}
    assert license_from_record(several) == "CC-BY-SA-3.0 AND CC0-1.0"
    # the record's own field wins over crawled markers
    assert license_from_record({"license": "Apache-2.0", **dolma}) == "Apache-2.0"
    assert url_from_record({"url": "a.org/x", "metadata": {"warc_url": "http://a.org/x"}}) == "http://a.org/x"


# --- policy ----------------------------------------------------------------------------------


def test_policy_on_inline_docs() -> None:
    d = docs([
        {"id": "mit", "license": "MIT"},
        {"id": "bysa", "license": "CC-BY-SA-4.0"},
        {"id": "nc", "license": "CC-BY-NC-4.0"},
        {"id": "nd", "license": "CC-BY-ND-4.0"},
        {"id": "bsd", "license": "BSD"},
        {"id": "none", "license": None},
        {"id": "or", "license": "CC-BY-NC-4.0 OR MIT"},
        {"id": "and", "license": "CC-BY-4.0 AND CC-BY-NC-4.0"},
    ])
    out = apply_license(d, LicenseParams.model_validate(NO_REGISTRY))
    assert reasons(out) == {
        "mit": None, "bysa": None, "nc": "license_not_allowed", "nd": "license_not_allowed",
        "bsd": "license_unrecognized", "none": None, "or": None, "and": "license_not_allowed",
    }
    assert out.filter(pl.col("id") == "nc")["detail"][0] == "CC-BY-NC-4.0 is not allowed for pretraining"
    assert out.columns[: d.width] == d.columns  # columns added, none dropped, order kept
    assert out["id"].to_list() == d["id"].to_list()

    strict = LicenseParams.model_validate({**NO_REGISTRY, "allow_unknown": False})
    assert reasons(apply_license(d, strict))["none"] == "license_unknown"

    # fine-tuning with its own list: NonCommercial allowed there, last match wins
    ft = LicenseParams.model_validate(
        {**NO_REGISTRY, "use": "finetuning", "finetuning": ["CC-BY*", "!CC-BY-ND*", "BSD"]})
    r = reasons(apply_license(d, ft))
    assert (r["nc"], r["nd"], r["bsd"], r["mit"]) == (None, "license_not_allowed", None, "license_not_allowed")

    kept, rejected = split_decisions(out, "license")
    assert kept.height + rejected.height == d.height
    assert set(rejected["stage"]) == {"license"}


def read_cc_pages(path: Path) -> tuple[pl.DataFrame, list[list[str]]]:
    """The CC web file as ingest will produce it after wiring (license + page url), plus raw markers."""
    rows, markers = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):  # never splitlines(): two texts hold U+2028
            obj = json.loads(line)
            markers.append(cc_markers(obj))
            rows.append({"id": obj["id"], "text": obj["text"], "source": "cc_web", "uri": f"{path.name}#L{n}",
                         "license": license_from_record(obj), "url": url_from_record(obj)})
    return pl.DataFrame(rows), markers


def test_cc_web_pages_policy(shared_data: Path) -> None:
    pages, markers = read_cc_pages(shared_data / CC_FILE)
    assert pages.height == 697 and all(markers)
    assert pages["license"].null_count() == 0
    # SOURCES.md 3a: 143 pages carry the plain CC-BY-SA-3.0 marker, 72 the plain CC-BY-4.0 one
    assert sum("cc_re__cc_re__cc_by_sa_3_0" in m for m in markers) == 143
    assert sum("cc_re__cc_re__cc_by_4_0" in m for m in markers) == 72

    def restricted(m: list[str], element: str) -> bool:
        return any(f"_{element}_" in k.removeprefix("cc_re__cc_re__cc_by") + "_" for k in m)

    nc = [restricted(m, "nc") for m in markers]
    nd = [restricted(m, "nd") for m in markers]
    by_sa_only = [all("_sa_" in k and "_nc_" not in k for k in m) for m in markers]

    out = apply_license(pages, LicenseParams.model_validate(NO_REGISTRY))
    got = out["reason"].to_list()
    expected = ["license_not_allowed" if (a or b) else None for a, b in zip(nc, nd)]
    assert got == expected
    assert got.count(None) == 414 and got.count("license_not_allowed") == 283
    assert sum(nc) == 272 and sum(n and not c for c, n in zip(nc, nd)) == 11
    assert all(r is None for r, s in zip(got, by_sa_only) if s)  # every BY-SA page is kept
    assert all(r == "license_not_allowed" for r, n in zip(got, nc) if n)  # every NC page is rejected

    # a policy that allows NonCommercial (e.g. a research fine-tune) keeps the NC pages without ND
    ft = LicenseParams.model_validate({**NO_REGISTRY, "use": "finetuning", "finetuning": ["CC*", "!CC-BY-*ND*"]})
    got_ft = apply_license(pages, ft)["reason"].to_list()
    assert got_ft == ["license_not_allowed" if b else None for b in nd]


# --- opt-outs --------------------------------------------------------------------------------


def test_parse_optout_lines() -> None:
    assert parse_optout_line("# a comment") is None
    assert parse_optout_line("   ") is None
    assert parse_optout_line("Example.COM") == ("domain", "example.com")
    assert parse_optout_line("*.www.example.com.") == ("domain", "example.com")
    assert parse_optout_line("https://www.Example.com/blog/  # asked 2024-05-01") == ("url", "example.com/blog/")
    assert parse_optout_line("example.com/blog") == ("url", "example.com/blog")
    assert parse_optout_line("A" * 64) == ("sha256", "a" * 64)
    assert parse_optout_line("doc-42") == ("id", "doc-42")
    assert parse_optout_line("id: example.com") == ("id", "example.com")  # explicit kind wins
    assert parse_optout_line("url:http://x.org/a") == ("url", "x.org/a")


def test_optouts_by_domain_prefix_id_and_hash(tmp_path: Path) -> None:
    d = docs([
        {"id": "d1", "text": "one", "uri": "https://blog.example.com/post/1", "license": "MIT"},
        {"id": "d2", "text": "two", "uri": "https://notexample.com/a", "license": "MIT"},
        {"id": "d3", "text": "three", "uri": "http://www.site.org/private/x?y=1", "license": "MIT"},
        {"id": "d4", "text": "four", "uri": "http://site.org/public/x", "license": "MIT"},
        {"id": "d5", "text": "Withdrawn   TEXT\n", "uri": "file.jsonl#L5", "license": "MIT"},
        {"id": "d6", "text": "six", "uri": "file.jsonl#L6", "license": "CC-BY-NC-4.0"},
        {"id": "d7", "text": "seven", "uri": "file.jsonl#L7", "license": "MIT"},
    ])
    reg = tmp_path / "optout"
    reg.mkdir()
    (reg / "domains.txt").write_text("# withdrawn sites\nexample.com\n")
    (reg / "misc.txt").write_text(f"https://site.org/private/\nd6\nsha256:{content_hash('withdrawn text')}\n")
    params = resolve_optouts(LicenseParams(), tmp_path)  # the default registry dir: <workdir>/optout
    out = apply_license(d, params)
    assert reasons(out) == {"d1": "consent_withdrawn", "d2": None, "d3": "consent_withdrawn", "d4": None,
                            "d5": "consent_withdrawn", "d6": "consent_withdrawn", "d7": None}
    detail = dict(zip(out["id"], out["detail"]))
    assert detail["d1"] == "opt-out registry entry domain:example.com @ optout/domains.txt:2"
    assert detail["d3"] == "opt-out registry entry url:site.org/private/ @ optout/misc.txt:1"
    assert detail["d6"].startswith("opt-out registry entry id:d6")  # consent before license
    assert detail["d5"].startswith("opt-out registry entry sha256:")

    # a `url` column (the page URL from ingest) is used instead of the provenance uri
    with_url = d.with_columns(pl.when(pl.col("id") == "d7").then(pl.lit("example.com/x")).alias("url"))
    assert reasons(apply_license(with_url, params))["d7"] == "consent_withdrawn"


def test_new_optout_changes_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "withdrawn.txt").write_text("a.org\n")
    base = {"optout_paths": ["withdrawn.txt"]}
    p1 = resolve_optouts(LicenseParams.model_validate(base), tmp_path)
    p1_again = resolve_optouts(LicenseParams.model_validate(base), tmp_path)
    (tmp_path / "withdrawn.txt").write_text("a.org\n# comments and order do not matter\n")
    p1_comment = resolve_optouts(LicenseParams.model_validate(base), tmp_path)
    (tmp_path / "withdrawn.txt").write_text("a.org\nb.org\n")
    p2 = resolve_optouts(LicenseParams.model_validate(base), tmp_path)
    fp = lambda p: fingerprint(LICENSE_STAGE.name, LICENSE_STAGE.version, p, ["input"])  # noqa: E731
    assert fp(p1) == fp(p1_again) == fp(p1_comment)
    assert fp(p2) != fp(p1)
    assert "optout_snapshot" not in p2.model_dump()  # the snapshot path is not fingerprinted...
    assert pickle.loads(pickle.dumps(p2)).optout_snapshot == p2.optout_snapshot  # ...but travels to tasks


def test_unresolved_registry_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resolve_optouts"):
        apply_license(docs([{"id": "x"}]), LicenseParams())
    with pytest.raises(FileNotFoundError, match="typo.txt"):
        resolve_optouts(LicenseParams(optout_paths=["typo.txt"]), tmp_path)
    # the default directory may be absent: an empty registry
    params = resolve_optouts(LicenseParams(), tmp_path)
    assert apply_license(docs([{"id": "x", "license": "MIT"}]), params)["reason"].to_list() == [None]


def test_optout_url_via_fsspec(tmp_path: Path) -> None:
    import fsspec

    with fsspec.open("memory://registry/optout.txt", "w") as f:
        f.write("id:x\n")
    params = resolve_optouts(LicenseParams(optout_paths=[], optout_url="memory://registry/optout.txt"), tmp_path)
    out = apply_license(docs([{"id": "x"}, {"id": "y"}]), params)
    assert out["reason"].to_list() == ["consent_withdrawn", None]
    assert out["detail"][0] == "opt-out registry entry id:x @ memory://registry/optout.txt:1"


def test_cc_pages_withdrawn_domain(shared_data: Path, tmp_path: Path) -> None:
    pages, _ = read_cc_pages(shared_data / CC_FILE)
    (tmp_path / "optout").mkdir()
    (tmp_path / "optout" / "sites.txt").write_text("wikidot.com\n")
    params = resolve_optouts(LicenseParams(), tmp_path)
    out = apply_license(pages, params)
    hosts = pages["url"].str.replace(r"^[a-z]+://", "").str.extract(r"^([^/]*)", 1)
    on_wikidot = (hosts.str.ends_with(".wikidot.com") | (hosts == "wikidot.com")).to_list()
    assert sum(on_wikidot) > 0
    assert [r == "consent_withdrawn" for r in out["reason"].to_list()] == on_wikidot


def test_empty_shard() -> None:
    out = apply_license(docs([]), LicenseParams.model_validate(NO_REGISTRY))
    assert out.height == 0 and {"reason", "detail", "optout"} <= set(out.columns)
