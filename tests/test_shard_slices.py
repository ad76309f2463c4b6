"""A shard is decided a slice of text at a time: the same decisions as on the whole shard, bounded memory."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from lmwright.flows.config import CurateConfig, load_config
from lmwright.tasks.core.dataset import DOC_SCHEMA
from lmwright.tasks.core.stage import ShardStage, apply_in_slices, text_slices
from lmwright.tasks.curate.langid import LANGID_STAGE
from lmwright.tasks.curate.normalize import NORMALIZE_STAGE
from lmwright.tasks.curate.pii import PII_STAGE, resolve_pii
from lmwright.tasks.curate.quality import QUALITY_STAGE, resolve_quality


def test_slices_cover_the_shard_in_order_and_stay_near_the_bound() -> None:
    texts = ["a" * 5, "b" * 5, "c" * 20, "d" * 3, None, "e" * 3] + ["f" * 4] * 10
    docs = pl.DataFrame({"text": texts})
    slices = text_slices(docs, 10)
    assert pl.concat(slices)["text"].to_list() == texts and len(slices) > 3
    for part in slices:  # at most the bound plus the one document that crosses it
        sizes = part["text"].str.len_bytes().fill_null(0).to_list()
        assert sum(sizes) - max(sizes) < 10
    assert text_slices(docs.head(1), 1)[0].height == 1 and len(text_slices(docs, 1 << 20)) == 1


def test_a_stage_sees_slices_and_its_output_is_the_whole_shards() -> None:
    seen: list[int] = []

    def apply(d: pl.DataFrame, params: object) -> pl.DataFrame:
        seen.append(d.height)
        # a column only some slices produce comes out null elsewhere, as on the whole shard
        extra = {"long": pl.lit("yes")} if d["text"].str.len_bytes().max() > 10 else {}
        return d.with_columns(reason=pl.lit(None, dtype=pl.String), **extra)

    docs = pl.DataFrame({"id": [str(i) for i in range(12)], "text": ["x" * 4] * 11 + ["y" * 20]})
    out = apply_in_slices(ShardStage("s", "1", apply), docs, None, max_bytes=16)
    assert len(seen) > 1 and max(seen) <= 4 and out["id"].to_list() == docs["id"].to_list()
    assert out["long"].to_list() == [None] * 11 + ["yes"]


def test_real_stages_decide_the_same_in_slices_as_on_the_whole_shard(shared_data: Path, tmp_path: Path) -> None:
    web = shared_data / "web" / "cc_warc_2019_07_cclicensed_pages.jsonl"
    lines = web.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 sits inside texts
    recs = [json.loads(line) for line in lines if line.strip()][:300]
    docs = pl.DataFrame(
        {"id": [str(r["id"]) for r in recs], "text": [r["text"] for r in recs], "source": ["web"] * len(recs),
         "uri": [f"web#L{i}" for i in range(len(recs))], "license": [None] * len(recs), "url": [None] * len(recs)},
        schema=DOC_SCHEMA,
    )
    config = load_config(CurateConfig, "tiny", ["langid.languages=null", "langid.processes=1"])
    chain = [
        (NORMALIZE_STAGE, config.normalize),
        (LANGID_STAGE, config.langid),
        (QUALITY_STAGE, resolve_quality(config.quality)),
        (PII_STAGE, resolve_pii(config.pii, str(tmp_path))),
    ]
    for stage, params in chain:
        whole = stage.apply(docs, params)
        sliced = apply_in_slices(stage, docs, params, max_bytes=64 << 10)
        assert len(text_slices(docs, 64 << 10)) > 5
        assert_frame_equal(sliced, whole, check_dtypes=False)
        docs = whole.filter(pl.col("reason").is_null()).drop("reason", "detail", strict=False)


def test_a_shards_signatures_in_slices_equal_the_whole_shards(shared_data: Path) -> None:
    from lmwright.tasks.curate.dedup.params import DedupParams
    from lmwright.tasks.curate.dedup.signatures import shard_signatures, signature_frame

    web = shared_data / "web" / "cc_warc_2019_07_cclicensed_pages.jsonl"
    recs = [json.loads(line) for line in web.read_text(encoding="utf-8").split("\n") if line.strip()][:200]
    docs = pl.DataFrame({"id": [str(r["id"]) for r in recs], "text": [r["text"] for r in recs]})
    for params in (DedupParams(), DedupParams(verify="jaccard")):
        whole = signature_frame(docs, "part-00000", params)
        sliced = shard_signatures(docs, "part-00000", params, max_bytes=64 << 10)
        assert len(text_slices(docs, 64 << 10)) > 3
        assert_frame_equal(sliced, whole)  # rows count from the shard's start, dtypes kept
