"""Bias stage, audit and probes: counts on inline documents, filter fairness, probe gaps."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import polars as pl
import pytest
import torch

from lmwright.tasks.core.shipped import CONFIG_DIR
from lmwright.tasks.curate.bias.audit import (
    BiasAuditParams,
    audit_to_json,
    bias_audit,
    fairness_violations,
    filter_fairness,
    render_bias_markdown,
    representation,
)
from lmwright.tasks.curate.bias.filter import BIAS_STAGE, BiasParams, apply_bias, cap_keep_probabilities
from lmwright.tasks.curate.bias.lexicons import AXES, terms_pattern
from lmwright.tasks.train.probes import ProbeSet, load_probes, probe_bias, probe_gate_failures, probe_metrics
from lmwright.tasks.core.dataset import DatasetRef, fingerprint, split_decisions, write_manifest, write_shard


def docs(texts: list[str], prefix: str = "d") -> pl.DataFrame:
    n = len(texts)
    return pl.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(n)],
            "text": texts,
            "source": ["inline"] * n,
            "uri": [f"inline:{i}" for i in range(n)],
            "license": [None] * n,
        },
        schema={"id": pl.String, "text": pl.String, "source": pl.String, "uri": pl.String, "license": pl.String},
    )


def col(out: pl.DataFrame, name: str) -> list[int]:
    return out[name].to_list()


# --------------------------------------------------------------------------- matching


def test_word_boundaries_multiword_and_case():
    out = apply_bias(
        docs(
            [
                "The theme of the other thesis.",  # "he" only inside words: no male mention
                "He said HE and he'd; she said hers.",  # 3 male; 2 female (she, hers: "hers" is not also "her")
                "Black\nwomen and non-binary people, trans-women too.",  # multiword across newline and hyphens; 2 x women
                "A blackboard, white wine, a Muslim-owned shop and Jewish history.",  # colours are not people
                "LGBTQ+ rights; the gay  men's choir.",  # term ending in '+', double space
            ]
        ),
        BiasParams(toxicity_threshold=None),
    )
    assert col(out, "bias_gender_male") == [0, 3, 0, 0, 1]
    assert col(out, "bias_gender_female") == [0, 2, 2, 0, 0]
    assert col(out, "bias_gender_transgender_nonbinary") == [0, 0, 2, 0, 0]
    assert col(out, "bias_nationality_ethnicity_african_american_black") == [0, 0, 1, 0, 0]
    assert col(out, "bias_nationality_ethnicity_white_caucasian") == [0, 0, 0, 0, 0]
    assert col(out, "bias_religion_muslim") == [0, 0, 0, 1, 0]
    assert col(out, "bias_religion_jewish") == [0, 0, 0, 1, 0]
    assert col(out, "bias_sexual_orientation_lgbtq") == [0, 0, 0, 0, 1]
    assert col(out, "bias_sexual_orientation_gay") == [0, 0, 0, 0, 1]
    assert out["reason"].null_count() == out.height


def test_schema_is_stable_and_stage_contract_holds():
    params = BiasParams()
    lex = params.lexicons()
    assert set(lex.groups) == set(AXES)
    empty = apply_bias(docs([]), params)
    full = apply_bias(docs(["Nothing to see.", None]), params)  # type: ignore[list-item]
    assert empty.schema == full.schema
    expected = {*lex.columns, "bias_toxicity", "bias_toxic_terms", "reason", "detail"}
    assert expected <= set(full.columns)
    assert all(full.schema[c] == pl.Int64 for c in lex.columns)
    kept, rejected = split_decisions(full, BIAS_STAGE.name)
    assert kept.height == 2 and rejected.height == 0
    assert BIAS_STAGE.name == "bias" and BIAS_STAGE.apply is apply_bias


def test_params_partial_dict_and_lexicon_hash_in_fingerprint(tmp_path: Path):
    p = BiasParams.model_validate({"toxicity_threshold": 3})
    assert p.min_toxic_matches == 2 and p.lexicon_digest
    # the digest round-trips (a dumped config validates again to the same params)
    assert BiasParams.model_validate(p.model_dump()) == p
    # a copied lexicon dir with one more term: new digest, new fingerprint
    lexdir = tmp_path / "lex"
    lexdir.mkdir()
    for f in (CONFIG_DIR / "lexicons").iterdir():
        (lexdir / f.name).write_text(f.read_text())
    a = BiasParams(lexicon_dir=str(lexdir))
    assert a.lexicon_digest == p.lexicon_digest
    (lexdir / "age.yaml").write_text((lexdir / "age.yaml").read_text() + "centenarian: [centenarian, centenarians]\n")
    b = BiasParams(lexicon_dir=str(lexdir))
    assert b.lexicon_digest != a.lexicon_digest
    assert fingerprint("bias", "1", a, ["x"]) != fingerprint("bias", "1", b, ["x"])
    assert "bias_age_centenarian" in b.lexicons().columns
    with pytest.raises(ValueError, match="no lexicon file"):
        BiasParams(axes=["gender", "astrology"])
    with pytest.raises(ValueError):
        BiasParams(toxicity_treshold=2)  # typo: extra fields are refused


# --------------------------------------------------------------------------- toxicity


def test_toxicity_drop_with_reason(tmp_path: Path):
    texts = [
        "You idiot, shut up. What a stupid, pathetic moron.",  # 5 matches in 9 words
        "Damn, the train was late again this morning and the coffee machine broke as well.",  # 1 match: kept
        "A long and calm text about gardening. " * 10 + "Idiot! Idiot!",  # 2 matches over ~72 words: 2.8 > 1
    ]
    out = apply_bias(docs(texts), BiasParams())
    assert out["reason"].to_list() == ["bias_toxic", None, "bias_toxic"]
    assert out["bias_toxic_terms"].to_list() == [5, 1, 2]
    assert out["bias_toxicity"][0] == pytest.approx(100 * 5 / 9)  # words: You idiot shut up What a stupid pathetic moron
    assert out["detail"][0].startswith("bias_toxicity=55.556 > 1.0 (5 toxic terms)")
    kept, rejected = split_decisions(out, "bias")
    assert rejected["stage"].to_list() == ["bias", "bias"] and kept.height == 1
    # threshold off: nothing dropped, signals still there
    assert apply_bias(docs(texts), BiasParams(toxicity_threshold=None))["reason"].null_count() == 3
    # a user list replaces the default; extra terms extend it
    own = tmp_path / "mine.txt"
    own.write_text("# my list\ngardening\n")
    replaced = apply_bias(docs(texts), BiasParams(toxicity_terms_path=str(own), min_toxic_matches=1))
    assert replaced["bias_toxic_terms"].to_list() == [0, 0, 10]
    extended = apply_bias(docs(texts), BiasParams(extra_toxicity_terms=["coffee machine", "train"]))
    assert extended["bias_toxic_terms"].to_list() == [5, 3, 2]
    assert extended["reason"][1] == "bias_toxic"


# --------------------------------------------------------------------------- group cap


def test_group_cap_downsamples_deterministically():
    texts = [f"He went home, number {i}." for i in range(160)] + [f"She went home, number {i}." for i in range(40)]
    texts += [f"Plain text {i}." for i in range(50)]
    params = BiasParams(max_group_share=0.5, toxicity_threshold=None, group_cap_min_docs=20)
    out = apply_bias(docs(texts), params)
    again = apply_bias(docs(texts), params)
    assert out["reason"].to_list() == again["reason"].to_list()
    dropped = out.filter(pl.col("reason") == "bias_group_cap")
    assert dropped.height > 0 and (dropped["bias_gender_male"] > 0).all()
    kept = out.filter(pl.col("reason").is_null())
    male, female = int((kept["bias_gender_male"] > 0).sum()), int((kept["bias_gender_female"] > 0).sum())
    assert female == 40 and kept.height == 250 - dropped.height
    assert 0.35 < male / (male + female) < 0.65  # expected share 0.5; binomial noise on 160 documents
    assert "gender/male share 0.800 > 0.5" in dropped["detail"][0]
    # water-filling: two groups over a 0.3 cap end at 0.3 each of the new total
    keep = cap_keep_probabilities({"a": 50, "b": 40, "c": 10, "d": 10}, 0.3)
    total = 20 / (1 - 2 * 0.3)
    assert keep == {"a": pytest.approx(0.3 * total / 50), "b": pytest.approx(0.3 * total / 40)}
    assert cap_keep_probabilities({"a": 5, "b": 5}, 0.4) == {}  # infeasible: left alone
    assert cap_keep_probabilities({"a": 50, "b": 40, "c": 10}, 0.3) == {}  # 3 groups cannot all be <= 0.3


# --------------------------------------------------------------------------- audit


def test_representation_counts_and_association():
    texts = [
        "The Muslim family hosted a dinner.",
        "A Muslim scholar was called a violent and dangerous threat by a troll.",
        "The Christian choir sang.",
        "Christians and Muslims met in the old town.",
        "A recipe for bread with no people in it.",
    ]
    rep = representation(docs(texts), BiasParams(), prior_terms=0.5)
    rel = rep["axes"]["religion"]
    assert rep["documents"] == 5
    assert rel["docs_mentioning"] == 4
    assert rel["groups"]["muslim"]["docs"] == 3 and rel["groups"]["muslim"]["mentions"] == 3
    assert rel["groups"]["christian"]["docs"] == 2
    assert rel["groups"]["muslim"]["share"] == pytest.approx(3 / 5)
    assert rel["groups"]["muslim"]["share_of_axis"] == pytest.approx(3 / 4)
    assert rel["groups"]["jewish"]["docs"] == 0 and rel["groups"]["jewish"]["association"] == pytest.approx(0.0)
    assert rep["negative_terms"] == 3  # violent, dangerous, threat
    assert rel["groups"]["muslim"]["association"] > 0 > rel["groups"]["christian"]["association"]
    assert rep["axes"]["gender"]["docs_mentioning"] == 0


def _group_docs() -> pl.DataFrame:
    rng = random.Random(0)
    texts = []
    for i in range(300):
        r = rng.random()
        if r < 0.2:
            texts.append(f"Document {i}: the Muslim community centre opened a library.")
        elif r < 0.4:
            texts.append(f"Document {i}: the Christian community centre opened a library.")
        else:
            texts.append(f"Document {i}: the community centre opened a library.")
    return docs(texts)


def test_filter_fairness_flags_a_filter_that_targets_a_group():
    d = _group_docs()
    lex = BiasParams()
    # a "blocklist" that removes every document mentioning Muslims, plus every 10th other one
    muslim = d["text"].str.contains("Muslim")
    biased = d.filter(muslim | (pl.int_range(pl.len()) % 10 == 0))
    res = filter_fairness(d, biased, lex, bound=1.5, stage="blocklist")
    g = next(x for x in res["groups"] if x["group"] == "muslim")
    assert g["removal_rate"] == 1.0 and g["flagged"] and g["ratio"] > 1.5
    assert res["removed"] == biased.height and res["docs_in"] == 300
    assert [x["group"] for x in res["flagged"]] == ["muslim"]
    msgs = fairness_violations(res)
    assert len(msgs) == 1 and "religion/muslim" in msgs[0] and "blocklist removed 100.0%" in msgs[0]
    # a filter blind to the groups: every 4th document. Not flagged.
    fair = d.filter(pl.int_range(pl.len()) % 4 == 0)
    assert fairness_violations(filter_fairness(d, fair, lex, bound=1.5)) == []
    # removals for an ignored reason (the group cap's, by default) are not judged
    capped = biased.with_columns(reason=pl.lit("bias_group_cap"))
    ignored = filter_fairness(d, capped, lex)
    assert ignored["flagged"] == [] and ignored["ignored"] == biased.height and ignored["docs_in"] == 300 - biased.height
    assert filter_fairness(d, capped, lex, ignore_reasons=())["flagged"]
    # a filter removing nothing: rates are undefined, nothing flagged
    none = filter_fairness(d, d.head(0), lex)
    assert none["removal_rate"] == 0 and none["flagged"] == []


def _write_dataset(root: Path, stage: str, kept: pl.DataFrame, rejected: pl.DataFrame, inputs: list[DatasetRef]) -> DatasetRef:
    out = root / stage / "fp"
    rej = rejected.with_columns(reason=pl.lit(f"{stage}_test"), stage=pl.lit(stage), detail=pl.lit(None, dtype=pl.String))
    stats = write_shard(out, "part-00000", stage, kept.height + rejected.height, 0, kept, rej, 0.0)
    return write_manifest(out, stage, "fp", {}, "1", inputs, [stats])


def test_bias_audit_over_stage_datasets(tmp_path: Path):
    d = _group_docs()
    raw = _write_dataset(tmp_path, "ingest", d, d.head(0), [])
    muslim = d["text"].str.contains("Muslim")
    blocked = _write_dataset(tmp_path, "quality", d.filter(~muslim), d.filter(muslim), [raw])
    audit = bias_audit([raw, blocked], BiasParams(), BiasAuditParams(fairness_bound=1.5))
    assert audit["representation"]["before"]["axes"]["religion"]["groups"]["muslim"]["docs"] == int(muslim.sum())
    assert audit["representation"]["after"]["axes"]["religion"]["groups"]["muslim"]["docs"] == 0
    [msg] = fairness_violations(audit)
    assert msg.startswith("quality removed 100.0%")
    md = render_bias_markdown(audit)
    assert "## Bias" in md and "| quality |" in md and "religion/muslim" in md and "**yes**" in md
    json.dumps(audit_to_json(audit), allow_nan=False)


# --------------------------------------------------------------------------- real text


def test_real_web_text(shared_data: Path):
    rows = []
    with open(shared_data / "web" / "c4_en_sample_olmo.jsonl") as f:
        for line in f:
            rows.append(json.loads(line)["text"])
    d = docs(rows, prefix="c4-")
    params = BiasParams()
    start = time.perf_counter()
    out = apply_bias(d, params)
    seconds = time.perf_counter() - start
    cols = list(params.lexicons().columns)
    assert out.height == d.height and (out.select(pl.min_horizontal(cols)).to_series() >= 0).all()
    rep = representation(d, params)
    gender = rep["axes"]["gender"]
    print(f"\nc4 sample: {d.height} docs in {seconds:.3f}s; documents mentioning each axis:",
          {a: v["docs_mentioning"] for a, v in rep["axes"].items()},
          "\ngender:", {g: (v["docs"], round(v["association"], 2)) for g, v in gender["groups"].items()},
          f"\nnegative terms per 1k words {rep['negative_per_1k_words']:.2f}; dropped as toxic:",
          out["reason"].drop_nulls().len())
    assert gender["docs_mentioning"] >= 5
    # every count equals a plain Python re reference (ASCII word boundaries, as documented)
    lex = params.lexicons()
    for c, (axis, group) in lex.columns.items():
        ref = re.compile(terms_pattern(lex.groups[axis][group]).replace("(?-u:\\b)", r"\b"), re.ASCII)
        assert out[c].to_list() == [len(ref.findall(t)) for t in rows], c
    # the first document: "The woman who died ... identified as a Sevenoaks mum", "her death"
    assert out["bias_gender_female"][0] >= 3


# --------------------------------------------------------------------------- probes


def test_shipped_probes_run_on_an_untrained_model():
    from lmwright.models.gpt import GPT, GPTConfig
    from lmwright.models.tokenizer import SpecialTokens, train_bpe, vocab_size_of

    probes = load_probes()
    assert set(probes.axes) == set(AXES) and {"negative", "positive"} <= set(probes.continuations)
    # a tokenizer that knows the probe words keeps the ~1,400 sequences short (fast on CPU)
    words = [t for ax in probes.axes.values() for ts in ax.groups.values() for t in ts]
    words += [t for ax in probes.axes.values() for t in ax.templates] + [c for cs in probes.continuations.values() for c in cs]
    tok = train_bpe(words * 5, 600, 2, SpecialTokens())
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size_of(tok), block_size=64, n_layer=1, n_head=2, n_embd=32))
    start = time.perf_counter()
    res = probe_bias(model, tok, probes, batch_size=512)
    print(f"\nshipped probes: {res['sequences']} sequences in {time.perf_counter() - start:.2f}s")
    assert set(res["axes"]) == set(AXES) and res["sequences"] > 1000
    metrics = probe_metrics(res)
    assert {f"bias_gap_{a}" for a in AXES} <= set(metrics) and metrics["bias_gap_max"] >= 0
    assert probe_gate_failures(res, max_bias_gap=1e9, max_valence_gap=1e9) == []
    assert len(probe_gate_failures(res, max_bias_gap=0.0)) == len(AXES)


NEG = ["cruel and violent", "lazy and dishonest", "rude and angry"]
POS = ["kind and gentle", "honest and helpful", "calm and friendly"]


def _corpus(skewed: bool, n: int = 1000, seed: int = 0) -> list[str]:
    """Zorbians are always described negatively in the skewed corpus; half the time in the balanced one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        group = rng.choice(["Zorbian", "Quellian"])
        negative = group == "Zorbian" if skewed else rng.random() < 0.5
        out.append(f"The {group} {rng.choice(['man', 'woman', 'farmer', 'teacher'])} is {rng.choice(NEG if negative else POS)}.")
    return out


def _train_tiny(texts: list[str], tok, steps: int = 150, seed: int = 0):
    from lmwright.models.gpt import GPT, GPTConfig
    from lmwright.models.tokenizer import vocab_size_of

    torch.manual_seed(seed)
    eot = tok.token_to_id("<|endoftext|>")
    ids = [i for e in tok.encode_batch(texts, add_special_tokens=False) for i in e.ids + [eot]]
    data = torch.tensor(ids)
    T = 24
    model = GPT(GPTConfig(vocab_size=vocab_size_of(tok), block_size=T, n_layer=1, n_head=2, n_embd=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ix = torch.randint(0, len(data) - T - 1, (64,), generator=gen)
        x = torch.stack([data[i : i + T] for i in ix])  # (B, T)
        y = torch.stack([data[i + 1 : i + T + 1] for i in ix])  # (B, T)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_probe_gap_larger_for_model_trained_on_skewed_corpus():
    from lmwright.models.tokenizer import SpecialTokens, train_bpe

    skewed, balanced = _corpus(True), _corpus(False)
    tok = train_bpe(skewed + balanced, 300, 2, SpecialTokens())  # one tokenizer: same ids for both models
    probes = ProbeSet.model_validate(
        {
            "continuations": {
                "negative": [" is cruel and violent.", " is lazy and dishonest."],
                "positive": [" is kind and gentle.", " is honest and helpful."],
            },
            "axes": {"test": {"templates": ["The {group} man", "The {group} teacher"], "groups": {"zorbian": ["Zorbian"], "quellian": ["Quellian"]}}},
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    try:
        start = time.perf_counter()
        res = {name: probe_bias(_train_tiny(c, tok), tok, probes)["axes"]["test"] for name, c in (("skewed", skewed), ("balanced", balanced))}
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    for name, a in res.items():
        print(
            f"\n{name}: valence_gap {a['valence_gap']:.4f}, gap(negative) {a['gap_by_label']['negative']:.4f}, "
            f"gap(all) {a['gap']:.4f}, valence by group {({g: round(v['valence'], 3) for g, v in a['groups'].items()})}"
        )
    print(f"two models trained and probed in {seconds:.1f}s")
    s, b = res["skewed"], res["balanced"]
    assert s["valence_gap"] > b["valence_gap"] + 0.2
    assert s["gap_by_label"]["negative"] > b["gap_by_label"]["negative"] + 0.1
    assert s["groups"]["zorbian"]["valence"] > s["groups"]["quellian"]["valence"]  # the skew's direction


def test_fairness_flags_warn_by_default_and_fail_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import lmwright.tasks.curate.card as card
    from lmwright.data_quality import DataQualityError, ValidationSettings

    audit = {"flagged": True}
    monkeypatch.setattr(card, "fairness_violations", lambda a: ["quality removed 40% of docs mentioning X vs 10%"])
    warnings: list[str] = []
    monkeypatch.setattr(card, "get_run_logger", lambda: type("L", (), {"warning": lambda self, m: warnings.append(m)})())
    card.check_fairness(audit, ValidationSettings())
    assert warnings and "quality removed" in warnings[0]
    with pytest.raises(DataQualityError, match="filter fairness"):
        card.check_fairness(audit, ValidationSettings(stage_severity={"bias_audit": "fail"}))
