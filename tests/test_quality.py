"""Quality stage: each rule's drop reason on a tiny document crafted to trip it (datatrove style)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from lmwright.tasks.curate.quality import QUALITY_STAGE, QualityParams, apply_quality

# A clean paragraph that passes every rule (6 sentences, stop words, no repetition).
CLEAN = (
    "The river runs through the old town and past the mill that was built with local stone.\n"
    "Children walk to school along the bank of the river each morning, and they wave to the fishermen.\n"
    "In the summer the water is low enough to cross on foot, but that is not safe in the spring.\n"
    "The council has plans to have a new bridge built with money from the regional fund.\n"
    "Most of the people who live here want to keep the character of the place as it is.\n"
    "Visitors come from far away to see the gardens, the church and the market on Saturdays."
)


# Gopher quality rules are tested on their own: a tiny document trips Gopher repetition's
# top n-gram rules first (its first 3-gram alone is > 18% of a 40-character text).
NO_REP = {"gopher_repetition": {"enabled": False}}


def run(texts: list[str], params: QualityParams | dict | None = None) -> pl.DataFrame:
    docs = pl.DataFrame(
        {
            "id": [f"d{i}" for i in range(len(texts))],
            "text": texts,
            "source": ["test"] * len(texts),
            "uri": [f"mem:{i}" for i in range(len(texts))],
            "license": [None] * len(texts),
        },
        schema_overrides={"license": pl.String},
    )
    p = params if isinstance(params, QualityParams) else QualityParams.model_validate(params or {})
    return apply_quality(docs, p)


def reason(text: str, params: QualityParams | dict | None = None) -> str | None:
    return run([text], params)["reason"][0]


def test_clean_paragraph_is_kept_with_signals():
    out = run([CLEAN])
    assert out["reason"][0] is None, out["detail"][0]
    for col in ("id", "text", "source", "uri", "license", "reason", "detail"):
        assert col in out.columns
    signals = [c for c in out.columns if c.startswith(("gopher_", "c4_", "fineweb_"))]
    assert {"gopher_n_words", "gopher_alpha_words_ratio", "gopher_top_2_gram_frac", "c4_num_sentences"} <= set(signals)
    assert {"fineweb_line_punct_ratio", "fineweb_list_ratio", "gopher_dup_5_gram_frac"} <= set(signals)
    for c in signals:
        assert out[c].dtype.is_numeric() and out[c].min() >= 0, c
    assert out["c4_num_sentences"][0] == 6
    assert out["text"][0] == CLEAN


def test_rows_and_columns_are_kept_in_order():
    docs = pl.DataFrame({"id": ["a", "b", "c"], "text": ["", CLEAN, "short"], "source": "s", "uri": "u", "license": None, "lang": "en"})
    out = apply_quality(docs, QualityParams())
    assert out["id"].to_list() == ["a", "b", "c"]
    assert out.columns[:6] == docs.columns
    assert out["reason"].to_list() == ["gopher_empty", None, "gopher_short_doc"]
    assert out["reason"].dtype == pl.String and out["detail"].dtype == pl.String


@pytest.mark.parametrize(
    "text, expected, params",
    [
        # Gopher repetition
        ("\n\n".join(["same paragraph here"] * 4 + ["other one", "third"]), "gopher_dup_para_frac", None),
        ("\n".join(["repeated line here"] * 5 + ["a", "b", "c"]), "gopher_dup_line_frac", None),
        (CLEAN + " " + " ".join(["buy cheap"] * 60), "gopher_top_2_gram", None),
        (CLEAN + "\n" + " ".join(["alpha bravo charlie delta echo foxtrot golf hotel india juliet."] * 4), "gopher_duplicated_5_n_grams", None),
        # Gopher quality
        ("The cat sat on the mat with the dog.", "gopher_short_doc", NO_REP),
        (" ".join(["a b of an to"] * 20) + " the and", "gopher_below_avg_threshold", NO_REP),
        (" ".join(f"extraordinarilylong{i}" for i in range(60)) + " the and", "gopher_above_avg_threshold", NO_REP),
        (CLEAN + " " + " ".join(f"#tag{i}" for i in range(30)), "gopher_too_many_hashes", NO_REP),
        (CLEAN + " " + " ".join(f"more{i}..." for i in range(30)), "gopher_too_many_ellipsis", NO_REP),
        ("\n".join(f"- item number {i} of the list with words" for i in range(12)), "gopher_too_many_bullets", NO_REP),
        ("\n".join(f"Line {i} of the text and that goes on..." for i in range(12)) + "\nand the end of it all", "gopher_too_many_end_ellipsis", NO_REP),
        (" ".join(f"{12345 + i * 1001} + {10000 + i * 777} = {22345 + i * 1778} ;" for i in range(40)) + " the and of", "gopher_below_alpha_threshold", NO_REP),
        (" ".join(f"word{i} apple banana cherry" for i in range(20)), "gopher_enough_stop_words", NO_REP),
        # C4
        (CLEAN + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4_lorem_ipsum", None),
        (CLEAN.replace("on Saturdays.", "on Saturdays { x }."), "c4_curly_bracket", None),
        ("\n".join(CLEAN.split("\n")[:3]) + "\n" + "\n".join(CLEAN.split("\n")[3:]).replace(".", ""), "c4_too_few_sentences", None),
        # FineWeb (C4 on, so its view is C4's kept lines)
        (CLEAN + "\nThank you for reading.\nThank you for reading.", "fineweb_char_dup_ratio", None),
    ],
)
def test_rule_reasons(text, expected, params):
    assert reason(text, params) == expected


def test_fineweb_rules_without_c4():
    # FineWeb alone (the others off), reading the raw text
    no_c4 = {"c4": {"enabled": False}, "gopher_repetition": {"enabled": False}, "gopher_quality": {"enabled": False}}
    no_punct = CLEAN.replace(".", "")
    assert reason(no_punct, no_c4) == "fineweb_line_punct_ratio"
    assert reason(no_punct, {**no_c4, "fineweb": {"line_punct_exclude_zero": True}}) is None
    short_lines = CLEAN + "\n" + "\n".join(f"Short line {i} is here." for i in range(14))
    assert reason(short_lines, no_c4) == "fineweb_short_line_ratio"
    listy = CLEAN + "\n" + "\n".join(f"item{i}" for i in range(60))
    assert reason(listy, {**no_c4, "fineweb": {"short_line_thr": None, "line_punct_thr": None}}) == "fineweb_list_ratio"


def test_first_failing_rule_decides_in_datatrove_order():
    # Too many hashes (Gopher quality) AND lorem ipsum (C4): Gopher quality runs first.
    both = CLEAN + " " + " ".join(f"#tag{i}" for i in range(30)) + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."
    assert reason(both) == "gopher_too_many_hashes"
    assert reason(both, {"gopher_quality": {"enabled": False}}) == "c4_lorem_ipsum"


def test_switched_off_rules_do_not_drop():
    short = "The cat sat on the mat with the dog."
    assert reason(short, {**NO_REP, "gopher_quality": {"min_doc_words": None}, "c4": {"enabled": False}, "fineweb": {"enabled": False}}) is None
    lorem = CLEAN + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."
    assert reason(lorem, {"c4": {"filter_lorem_ipsum": False}}) is None
    assert reason(lorem, {"c4": {"enabled": False}}) is None
    dup = CLEAN + "\nThank you for reading.\nThank you for reading."
    assert reason(dup, {"fineweb": {"char_duplicates_ratio": None}}) is None
    assert reason(dup, {"fineweb": {"enabled": False}}) is None
    paras = "\n\n".join(["same paragraph here"] * 4 + ["other one", "third"])
    off = {"gopher_repetition": {"enabled": False}, "gopher_quality": {"enabled": False}, "c4": {"enabled": False}, "fineweb": {"enabled": False}}
    assert reason(paras, off) is None


def test_c4_rewrite_text_keeps_only_kept_lines():
    text = CLEAN + "\nMenu Home About"
    out = run([text], {"c4": {"rewrite_text": True}})
    assert out["reason"][0] is None
    assert out["text"][0] == CLEAN
    assert run([text])["text"][0] == text  # default: text untouched


def test_params_partial_dict_validates_and_serialises():
    p = QualityParams.model_validate({"gopher_quality": {"min_doc_words": 10}, "c4": {"enabled": False}})
    assert p.gopher_quality.min_doc_words == 10
    assert p.gopher_quality.max_doc_words == 100_000
    assert p.gopher_repetition.dup_line_frac == 0.3 and p.fineweb.new_line_ratio == 0.3
    assert QualityParams.model_validate(json.loads(p.model_dump_json())) == p
    with pytest.raises(Exception):
        QualityParams.model_validate({"gopher_quality": {"min_doc_wrds": 10}})
    for block in ("gopher_repetition", "gopher_quality", "c4", "fineweb"):
        for name, field in type(getattr(p, block)).model_fields.items():
            assert field.description, f"{block}.{name} has no description"


def test_stage_contract():
    assert QUALITY_STAGE.name == "quality" and QUALITY_STAGE.apply is apply_quality
    empty = pl.DataFrame(schema={"id": pl.String, "text": pl.String, "source": pl.String, "uri": pl.String, "license": pl.String})
    out = apply_quality(empty, QualityParams())
    assert out.height == 0 and "reason" in out.columns
