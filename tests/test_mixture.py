"""Diversity figures and the data mix (tasks/curate/mixture.py)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from lmwright.tasks.curate.mixture import (
    MixtureParams,
    diversity,
    effective_number,
    epoch_order,
    expected_tokens,
    mixture_plan,
    mixture_report,
    render_diversity_markdown,
    render_mixture_markdown,
)


def corpus(n: int = 3000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "id": [f"doc-{i}" for i in range(n)],
        "source": rng.choice(["web", "books", "code"], size=n, p=[0.6, 0.1, 0.3]).tolist(),
        "lang": rng.choice(["en", "fr", None], size=n, p=[0.7, 0.2, 0.1]).tolist(),
        "n_tokens": rng.integers(1, 400, size=n).tolist(),
    })


WEIGHTS = MixtureParams(source_weights={"web": 0.3, "books": 2.5, "code": 1.0}, language_weights={"fr": 1.5})


def test_weights_give_promised_token_shares() -> None:
    docs = corpus()
    plan = mixture_plan(docs, WEIGHTS)
    assert plan["id"].to_list() == docs["id"].to_list()
    report = mixture_report(plan, docs, WEIGHTS)
    promised = expected_tokens(docs, WEIGHTS)
    max_doc = int(docs["n_tokens"].max())
    groups = docs.select("source", pl.col("lang").fill_null("unknown")).unique().height
    for source, row in report["sources"].items():
        # each (source, lang) group lands within half a document of weight x tokens
        assert abs(row["tokens_after"] - promised[source]) <= groups * max_doc / 2
        assert row["share_after"] == pytest.approx(row["share_promised"], abs=0.005)
    assert report["sources"]["books"]["share_after"] > report["sources"]["books"]["share_before"]
    assert report["sources"]["web"]["share_after"] < report["sources"]["web"]["share_before"]
    assert report["tokens_after"] == int((docs["n_tokens"] * plan["repeats"]).sum())
    assert "| books |" in render_mixture_markdown(report)


def test_per_group_tokens_within_half_a_document() -> None:
    docs = corpus()
    plan = mixture_plan(docs, WEIGHTS)
    d = docs.with_columns(plan["repeats"], pl.col("lang").fill_null("unknown"))
    w = {"web": 0.3, "books": 2.5, "code": 1.0}
    for (source, lang), g in d.group_by(["source", "lang"]):
        weight = w[source] * (1.5 if lang == "fr" else 1.0)
        after = int((g["n_tokens"] * g["repeats"]).sum())
        assert abs(after - weight * g["n_tokens"].sum()) <= g["n_tokens"].max() / 2 + 1e-9
        base = math.floor(weight)
        assert set(g["repeats"].to_list()) <= {base, base + 1}  # integer part repeats, fraction subsets


def test_integer_weights_and_zero() -> None:
    docs = corpus(200)
    plan = mixture_plan(docs, MixtureParams(source_weights={"web": 2, "books": 0}, default_weight=1))
    by = dict(zip(docs["id"], docs["source"]))
    for i, r in zip(plan["id"], plan["repeats"]):
        assert r == {"web": 2, "books": 0, "code": 1}[by[i]]
    identity = mixture_plan(docs, MixtureParams())
    assert MixtureParams().is_identity() and set(identity["repeats"]) == {1}


def test_same_config_same_mix() -> None:
    docs = corpus()
    a = mixture_plan(docs, WEIGHTS)
    b = mixture_plan(docs.sample(fraction=1.0, shuffle=True, seed=7), WEIGHTS)
    assert a.equals(mixture_plan(docs, WEIGHTS))
    assert dict(zip(a["id"], a["repeats"])) == dict(zip(b["id"], b["repeats"]))  # input order does not matter
    other = mixture_plan(docs, WEIGHTS.model_copy(update={"seed": 1}))
    assert not a.equals(other)  # another seed, another subset...
    assert mixture_report(other, docs, WEIGHTS)["sources"]["web"]["share_after"] == pytest.approx(
        mixture_report(a, docs, WEIGHTS)["sources"]["web"]["share_after"], abs=0.005)  # ...same shares


def test_subset_is_stable_when_the_corpus_grows() -> None:
    docs = corpus(3000)
    small = dict(zip(*mixture_plan(docs.head(2000), WEIGHTS).get_columns()))
    large = dict(zip(*mixture_plan(docs, WEIGHTS).get_columns()))
    same = sum(small[i] == large[i] for i in small)
    assert same / len(small) > 0.9


def test_weights_are_validated() -> None:
    with pytest.raises(ValidationError):
        MixtureParams(source_weights={"web": -1})
    with pytest.raises(ValidationError):
        MixtureParams(language_weights={"en": float("nan")})
    with pytest.raises(ValidationError):
        MixtureParams.model_validate({"source_weight": {"web": 1}})  # typo'd field name
    assert MixtureParams.model_validate({"source_weights": {"web": 2}}).default_weight == 1.0


def test_epoch_order_repeats_ranges_epoch_by_epoch() -> None:
    index = pl.DataFrame({"id": ["a", "b", "c", "d"], "offset": [0, 5, 9, 12], "tokens": [5, 4, 3, 2]})
    plan = pl.DataFrame({"id": ["a", "b", "c"], "repeats": [2, 0, 3]}, schema={"id": pl.String, "repeats": pl.UInt32})
    order = epoch_order(index, plan)
    assert order.select("epoch", "id").rows() == [(0, "a"), (0, "c"), (0, "d"), (1, "a"), (1, "c"), (2, "c")]
    assert int(order["tokens"].sum()) == 5 * 2 + 3 * 3 + 2


def test_effective_number() -> None:
    assert effective_number({"a": 5, "b": 5, "c": 5, "d": 5}) == pytest.approx(4.0)
    assert effective_number({"a": 10}) == pytest.approx(1.0)
    assert effective_number({}) == 0.0
    assert 1.0 < effective_number({"a": 90, "b": 10}) < 2.0


def test_diversity_of_a_corpus() -> None:
    texts = ["x" * 50, "y" * 150, "z" * 5000, "w" * 200_000, "", None]
    lf = pl.LazyFrame({
        "id": list("abcdef"),
        "text": texts,
        "source": ["s1", "s1", "s2", "s2", "s3", "s3"],
        "lang": ["en", "fr", "en", None, "de", "en"],
        "license": ["MIT", None, "CC-BY-4.0", "CC-BY-4.0", None, "MIT"],
    })
    div = diversity(lf)
    assert div["documents"] == 6 and div["chars"] == 50 + 150 + 5000 + 200_000
    assert div["sources"]["documents"] == {"s1": 2, "s2": 2, "s3": 2}
    assert div["sources"]["effective"] == pytest.approx(3.0)
    assert div["licenses"]["documents"] == {"CC-BY-4.0": 2, "MIT": 2, "unknown": 2}
    assert div["languages"]["documents"]["unknown"] == 1
    hist = {b["bucket"]: b["documents"] for b in div["length_histogram"]}
    assert hist["0-100"] == 3 and hist["100-300"] == 1 and hist["3k-10k"] == 1 and hist["100k+"] == 1
    assert sum(hist.values()) == 6
    md = render_diversity_markdown(div)
    assert "Effective number" in md and "| s1 | 2 |" in md and "100k+" in md


def test_diversity_without_lang_column() -> None:
    div = diversity(pl.DataFrame({"text": ["a", "b"], "source": ["x", "y"], "license": [None, None]}))
    assert "languages" not in div and div["licenses"]["effective"] == pytest.approx(1.0)
