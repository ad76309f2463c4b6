"""Quality per language: every language langid keeps is judged by its own stop words and thresholds."""

from __future__ import annotations

import statistics
from pathlib import Path

import polars as pl
import pytest
import yaml

from lmwright.flows.config import ConfigError, CurateConfig, load_config
from lmwright.tasks.core.dataset import write_manifest, write_shard
from lmwright.tasks.curate.langid import LangidParams, _model, apply_langid
from lmwright.tasks.curate.normalize import NormalizeParams, apply_normalize
from lmwright.tasks.curate.quality import (
    LanguageTableError,
    QualityParams,
    apply_quality,
    load_table,
    resolve_quality,
    settings_for,
)
from lmwright.tasks.curate.quality.report import language_report, render_language_markdown

# Article 1 and 2 of the UDHR in German (the text of ../shared/data/multilingual/udhr/deu_1996.txt).
GERMAN = (
    "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft und Gewissen begabt "
    "und sollen einander im Geist der Brüderlichkeit begegnen.\n"
    "Jeder hat Anspruch auf die in dieser Erklärung verkündeten Rechte und Freiheiten ohne irgendeinen Unterschied, "
    "etwa nach Rasse, Hautfarbe, Geschlecht, Sprache, Religion, politischer oder sonstiger Überzeugung, nationaler "
    "oder sozialer Herkunft, Vermögen, Geburt oder sonstigem Stand.\n"
    "Des weiteren darf kein Unterschied gemacht werden auf Grund der politischen, rechtlichen oder internationalen "
    "Stellung des Landes oder Gebiets, dem eine Person angehört, gleichgültig ob dieses unabhängig ist, unter "
    "Treuhandschaft steht, keine Selbstregierung besitzt oder sonst in seiner Souveränität eingeschränkt ist."
)
# Article 1 of the UDHR in Chinese (cmn_hans.txt), three times over two paragraphs' worth of text.
CHINESE = (
    "人人生而自由,在尊严和权利上一律平等。他们赋有理性和良心,并应以兄弟关系的精神相对待。\n"
    "人人有资格享有本宣言所载的一切权利和自由,不分种族、肤色、性别、语言、宗教、政治或其他见解、国籍或社会出身、财产、出生或其他身分等任何区别。"
)


def docs(texts: list[str], langs: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [f"d{i}" for i in range(len(texts))], "text": texts, "lang": langs}, schema_overrides={"lang": pl.String}
    )


def test_every_language_langid_can_keep_has_stop_words_and_a_source():
    languages = {"zh" if code.startswith("zh") else code for code in _model().langlist} - {"en"}
    table = load_table("fineweb2")
    assert languages <= set(table), sorted(languages - set(table))
    for lang in languages:
        entry = table[lang]
        assert entry.source and entry.source.startswith("FineWeb-2 configs/"), lang
        assert len(entry.gopher_quality["stop_words"]) >= 5, lang
        assert entry.c4 == {"enabled": False}, lang  # the table's defaults, as FineWeb-2 runs without C4


def test_german_kept_by_german_stop_words_and_dropped_by_english_ones():
    german = docs([GERMAN], ["de"])
    assert apply_quality(german, QualityParams())["reason"][0] is None
    english_only = apply_quality(german, QualityParams(language_table=None))
    assert english_only["reason"][0] == "gopher_enough_stop_words"


def test_each_document_judged_by_its_own_language_rows_in_order():
    english = (
        "The people of the town have the right to be heard, and the council that they elected will meet with them.\n"
    ) * 1
    mixed = docs([GERMAN, english * 6, GERMAN, CHINESE], ["de", "en", None, "zh"])
    out = apply_quality(mixed, QualityParams(gopher_repetition={"enabled": False}))
    assert out["id"].to_list() == ["d0", "d1", "d2", "d3"]
    # German text without a language is judged by the blocks (English stop words) and dropped.
    assert out["reason"].to_list()[0] is None and out["reason"].to_list()[2] == "gopher_enough_stop_words"
    assert out["gopher_stop_words"][0] >= 2 and out["gopher_stop_words"][2] == 0


def test_languages_judged_together_decide_as_each_alone(shared_data: Path):
    """Signals are shared by languages that read text alike; every decision equals judging its language alone."""
    raw = multilingual_documents(shared_data).filter(pl.col("label").is_in(["en", "de", "fr", "zh", "ja", "th", "ko"]))
    mixed = raw.with_columns(lang=pl.when(pl.col("label") == "fr").then(None).otherwise(pl.col("label"))).sample(
        fraction=1.0, shuffle=True, seed=3
    )
    together = apply_quality(mixed, QualityParams())
    alone = pl.concat([apply_quality(part, QualityParams()) for part in mixed.partition_by("lang", maintain_order=True)])
    alone = mixed.select("id").join(alone, on="id", how="left", maintain_order="left")
    for col in ("reason", "detail", "gopher_stop_words", "gopher_n_words", "c4_num_sentences"):
        assert together[col].equals(alone[col]), col
    assert together["id"].to_list() == mixed["id"].to_list()


def test_text_without_spaces_counts_characters_as_words():
    out = apply_quality(docs([CHINESE], ["zh"]), QualityParams())
    han = sum(1 for c in CHINESE if "\u4e00" <= c <= "\u9fff")
    assert out["gopher_n_words"][0] == han  # each Han character is a word (punctuation is not a word)
    assert out["reason"][0] is None, out["detail"][0]
    spaced = apply_quality(docs([CHINESE], ["zh"]), QualityParams(languages={"zh": {"segmentation": "spaces"}}))
    assert spaced["gopher_n_words"][0] < han / 5  # runs of characters between punctuation: a few long "words"
    assert spaced["reason"][0] is not None  # too few, too long words: the English reading of Chinese drops it


def test_a_users_language_entry_is_laid_over_the_tables():
    params = resolve_quality(QualityParams(languages={"de": {"gopher_quality": {"min_stop_words": 40}}}))
    de = settings_for(params, "de")
    assert de.gopher_quality.min_stop_words == 40
    assert "und" in de.gopher_quality.stop_words  # the table's German stop words stay
    assert de.gopher_quality.max_avg_word_length == 15  # and its thresholds
    assert settings_for(params, "en").gopher_quality.stop_words[:2] == ["the", "be"]
    assert apply_quality(docs([GERMAN], ["de"]), params)["reason"][0] == "gopher_enough_stop_words"


def test_a_bad_language_entry_names_the_field(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"quality\.languages\.de.*gopher_quality\.min_stop_wrds"):
        load_config(CurateConfig, None, ["quality.languages.de.gopher_quality.min_stop_wrds=1"])
    with pytest.raises(ConfigError, match=r"gopher_quality\.min_stop_words"):
        load_config(CurateConfig, None, ["quality.languages.de.gopher_quality.min_stop_words=many"])
    table = tmp_path / "mine.yaml"
    table.write_text("languages:\n  de:\n    fineweb: {line_punct: 0.1}\n")
    with pytest.raises(LanguageTableError, match=r"mine\.yaml: languages\.de: .*fineweb\.line_punct"):
        resolve_quality(QualityParams(language_table=str(table)))
    with pytest.raises(LanguageTableError, match="no such table"):
        resolve_quality(QualityParams(language_table="fineweb3"))


def test_resolved_params_carry_the_tables_contents(tmp_path: Path):
    """The stage is fingerprinted on resolved params: editing a table file changes them, so quality reruns."""
    table = tmp_path / "mine.yaml"
    table.write_text("languages:\n  de:\n    gopher_quality: {stop_words: [und, der]}\n")
    first = resolve_quality(QualityParams(language_table=str(table)))
    table.write_text("languages:\n  de:\n    gopher_quality: {stop_words: [und, die]}\n")
    second = resolve_quality(QualityParams(language_table=str(table)))
    assert first.language_table == str(table.resolve()) and first.languages["de"].gopher_quality["stop_words"] == ["und", "der"]
    assert second.languages["de"].gopher_quality["stop_words"] == ["und", "die"]
    assert resolve_quality(first) == first  # resolving twice changes nothing


def multilingual_documents(data: Path) -> pl.DataFrame:
    """Documents of ~10 web sentences (Leipzig) and ~15 UDHR lines per language, labelled by file."""
    rows = []
    for f in sorted((data / "multilingual/leipzig_sentences").glob("*.txt")):
        lines = f.read_text(encoding="utf-8").splitlines()
        rows += [{"text": "\n".join(lines[i : i + 10]), "label": f.stem} for i in range(0, len(lines), 10)]
    labels = dict(
        (line.split("\t")[0], line.split("\t")[2].split("-")[0])
        for line in (data / "multilingual/udhr/languages.tsv").read_text(encoding="utf-8").splitlines()[1:]
    )
    for f in sorted((data / "multilingual/udhr").glob("*.txt")):
        lines = f.read_text(encoding="utf-8").splitlines()
        rows += [{"text": "\n".join(lines[i : i + 15]), "label": labels[f.name]} for i in range(0, len(lines), 15)]
    frame = pl.DataFrame(rows).with_row_index("n")
    return frame.with_columns(id=pl.format("doc-{}", "n"), label=pl.col("label").replace({"nb": "no"})).drop("n")


def test_each_kept_language_survives_quality_close_to_english(shared_data: Path):
    """UDHR and Leipzig documents through normalize -> langid (every language) -> quality, as curate runs them."""
    raw = multilingual_documents(shared_data)
    normalized = apply_normalize(raw, NormalizeParams()).drop("reason")
    identified = apply_langid(normalized, LangidParams(languages=None, processes=1))
    # Judge each language on the documents langid labels correctly, as a curate keeping that language would.
    ours = identified.filter(pl.col("reason").is_null() & (pl.col("lang") == pl.col("label"))).drop("reason", "detail")
    judged = apply_quality(ours, QualityParams())
    rates = judged.group_by("lang").agg(n=pl.len(), kept=pl.col("reason").is_null().mean()).filter(pl.col("n") >= 20)
    rate = dict(zip(rates["lang"], rates["kept"]))
    assert len(rate) >= 45, sorted(rate)  # Leipzig's and UDHR's languages that langdetect knows
    english = rate.pop("en")
    assert english >= 0.8
    low = {lang: round(r, 2) for lang, r in rate.items() if r < 0.7 * english}
    assert not low, f"English keeps {english:.2f}; these keep less than 70% of that: {low}"
    assert statistics.median(rate.values()) >= english - 0.1
    # Before per-language settings every one of them fell to English stop words.
    english_rules = apply_quality(ours.filter(pl.col("lang") != "en"), QualityParams(language_table=None))
    assert english_rules["reason"].is_null().mean() < 0.1


def test_card_shows_the_thresholds_each_language_was_judged_by(tmp_path: Path):
    params = resolve_quality(QualityParams())
    decided = apply_quality(docs([GERMAN, GERMAN[:80], CHINESE], ["de", "de", "zh"]), params)
    kept = decided.filter(pl.col("reason").is_null()).drop("reason", "detail")
    rejected = decided.filter(pl.col("reason").is_not_null()).with_columns(stage=pl.lit("quality"))
    stats = write_shard(tmp_path, "part-00000", "quality", 3, 0, kept, rejected, 0.0)
    ref = write_manifest(tmp_path, "quality", "fp", params, "2", [], [stats])
    rows = {r["lang"]: r for r in language_report(ref)}
    assert (rows["de"]["in"], rows["de"]["kept"]) == (2, 1)
    assert rows["de"]["rejected_by_reason"] == {decided["reason"][1]: 1}
    assert rows["de"]["settings"]["max_avg_word_length"] == 15 and "und" in rows["de"]["settings"]["stop_words"]
    assert rows["de"]["settings"]["source"].startswith("FineWeb-2 configs/deu_Latn.yml")
    assert rows["zh"]["settings"]["segmentation"] == "characters" and rows["zh"]["settings"]["note"]
    markdown = "\n".join(render_language_markdown(list(rows.values())))
    assert "## Quality by language" in markdown and "| de | 2 | 1 (50%) |" in markdown
    assert "der, und, die, in, von +10 (2)" in markdown and "- **zh**: Written without spaces" in markdown


def test_shipped_table_is_valid_yaml_with_attribution():
    text = (Path(__file__).resolve().parents[1] / "configs/quality/fineweb2.yaml").read_text(encoding="utf-8")
    assert "ODC-By" in text and "huggingface/fineweb-2" in text
    assert set(yaml.safe_load(text)) == {"defaults", "languages"}
