"""Consent withdrawn after a document was kept: the next refresh drops it, the cards name the models that hold it."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from lmwright.flows.refresh import refresh
from lmwright.tasks.core.dataset import DatasetRef
from lmwright.tasks.curate.license.optout import content_hash, resolve_optouts
from lmwright.tasks.curate.license.policy import LicenseParams
from lmwright.tasks.refresh.versions import read_latest, version_parts
from lmwright.tasks.refresh.withdraw import apply_withdraw, consent_params, models_containing, read_record, render_withdrawals_markdown
from tests.test_refresh import SETTINGS, paragraphs, refresh_config, write_paragraphs

pytestmark = pytest.mark.usefixtures("prefect_harness")

HOST = "https://books.example.org/pride"


def corpus(manifest: dict) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p, columns=["id", "text", "url"]) for p in version_parts(manifest)])


def train_ids(model_dir: str) -> set[str]:
    """Documents in the train split of the tokens a model was trained on (what its weights saw)."""
    tokens = json.loads((Path(model_dir) / "result.json").read_text())["tokens"]
    docs = pl.read_parquet(Path(tokens) / "docs.parquet")
    return set(docs.filter(pl.col("split") == "train")["id"].to_list())


def test_apply_withdraw_names_the_entry(tmp_path: Path) -> None:
    (tmp_path / "optout").mkdir()
    (tmp_path / "optout" / "a.txt").write_text("# requests\nid: d2\nurl: https://x.org/private/\n")
    params = consent_params(resolve_optouts(LicenseParams(pretraining=["MIT"]), tmp_path))
    assert params.pretraining != ["MIT"]  # the license policy is not part of a withdrawal's fingerprint
    docs = pl.DataFrame({
        "id": ["d1", "d2", "d3"],
        "text": ["one", "two", "three"],
        "url": ["https://x.org/public/1", "https://x.org/public/2", "https://www.x.org/private/3"],
        "reason": [None, None, None],
    }, schema={"id": pl.String, "text": pl.String, "url": pl.String, "reason": pl.String})
    out = apply_withdraw(docs, params)
    assert out["reason"].to_list() == [None, "consent_withdrawn", "consent_withdrawn"]
    assert out["detail"].to_list()[1:] == [
        "opt-out registry entry id:d2 @ optout/a.txt:2",
        "opt-out registry entry url:x.org/private/ @ optout/a.txt:3",
    ]


def _model(work: Path, stage: str, name: str, result: dict) -> Path:
    d = work / "models" / stage / name
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(result))
    (d / "manifest.json").write_text("{}")
    return d


def test_models_containing_follows_lineage_and_says_when_it_cannot_tell(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    pl.DataFrame({"id": ["x", "y", "z"], "split": ["train", "val", "train"], "offset": [0, 0, 5], "repeats": [1, 1, 0]}) \
        .write_parquet(tokens / "docs.parquet")
    a = _model(tmp_path, "pretrain", "a", {"tokens": str(tokens), "init_from": None})
    b = _model(tmp_path, "pretrain", "b", {"tokens": str(tmp_path / "gone"), "init_from": str(a / "checkpoints" / "best")})
    c = _model(tmp_path, "finetune", "c", {"base": str(b), "sft": "s"})
    d = _model(tmp_path, "pretrain", "d", {"tokens": str(tmp_path / "gone"), "init_from": None})
    unknown: set[str] = set()
    found = models_containing(tmp_path, ["x", "y", "z"], unknown)
    # x: trained on by a, inherited by b and c; y only validated on; z left out of the mix (repeats 0)
    assert found == {str(a.resolve()): ["x"], str(b.resolve()): ["x"], str(c.resolve()): ["x"]}
    assert unknown == {str(b.resolve()), str(c.resolve()), str(d.resolve())}
    report = {"documents": [], "models": {m: len(v) for m, v in found.items()}, "unknown": sorted(unknown)}
    assert "This model contains 1 of them." in render_withdrawals_markdown(report, model=str(a))
    assert "cannot be checked" in render_withdrawals_markdown(report, model=str(d))


def test_withdrawn_document_leaves_the_next_version(tmp_path: Path, shared_data: Path) -> None:
    src, work = tmp_path / "src", tmp_path / "w"
    src.mkdir()
    # one record per paragraph; straight quotes, as C4's terminal-punctuation rule knows no curly ones
    straight = str.maketrans({"\n": " ", "\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
    pride = [p.translate(straight) for p in paragraphs(shared_data / "gutenberg" / "pg1342_pride_and_prejudice.txt")[:320]]
    with open(src / "pride.jsonl", "w") as f:
        for i, text in enumerate(pride):
            f.write(json.dumps({"id": f"pp-{i}", "text": text, "url": f"{HOST}/{i}", "license": "CC0-1.0"}) + "\n")
    config = refresh_config(work, src)

    first = refresh(config, SETTINGS)
    assert first.version == "v0001" and first.model, first.message
    v1 = read_latest(work)
    docs = corpus(v1).sort("id")
    assert docs.height > 250

    # Owners withdraw: two ids, one text by its hash, one URL prefix (pride/15 -> 15 and 150..159)
    by_hash = docs.filter(pl.col("id") == "pp-40")["text"].item()
    (work / "optout").mkdir()
    (work / "optout" / "requests.txt").write_text(
        "# consent withdrawn, one request per line\n"
        "id: pp-3\n"
        "pp-7\n"
        f"sha256:{content_hash(by_hash)}\n"
        f"url: {HOST}/15\n"
    )
    expected = {"pp-3", "pp-7", "pp-40"} | {i for i, u in zip(docs["id"], docs["url"]) if u.startswith(f"{HOST}/15")}
    expected &= set(docs["id"].to_list())  # a paragraph the filters dropped was never in the corpus
    assert len(expected) >= 8

    # (1) no new files, but withdrawals: a new version without them, no training
    second = refresh(config, SETTINGS)
    assert second.version == "v0002" and second.withdrawn == len(expected), second.message
    assert second.model is None and second.new_files == 0
    v2 = read_latest(work)
    assert set(corpus(v2)["id"].to_list()) == set(docs["id"].to_list()) - expected
    assert v2["rows"] == v1["rows"] - len(expected)
    # the dropped documents have a recorded reason, naming the registry line
    refiltered = v2["datasets"][0]
    assert refiltered["withdrawn_from"] == v1["datasets"][0]["path"] and refiltered["added_in"] == "v0001"
    ds = DatasetRef(refiltered["stage"], refiltered["fingerprint"], refiltered["path"])
    rejected = pl.concat([pl.read_parquet(p) for p in ds.rejected_parts()])
    assert set(rejected["id"].to_list()) == expected
    assert set(rejected["reason"].to_list()) == {"consent_withdrawn"}
    assert rejected.filter(pl.col("id") == "pp-40")["detail"].item().endswith("optout/requests.txt:4")
    # v0001 is untouched (immutable) and still lists them
    assert expected <= set(corpus(read_json(work / "corpus" / "v0001" / "manifest.json"))["id"].to_list())
    # the card names the model that still contains them: the ones in its train split
    in_first = expected & train_ids(first.model)
    assert in_first, "the planted withdrawals should include training documents"
    card = Path(v2["card"]).read_text()
    assert "## Consent withdrawn" in card
    assert f"| {Path(first.model).resolve()} | {len(in_first)} |" in card
    record = read_record(v2["withdrawn"])
    assert set(record["id"].to_list()) == expected and set(record["withdrawn_in"].to_list()) == {"v0002"}
    assert Path(v2["withdrawn"]).parent == work / "corpus" / "v0002"

    # (2) nothing new now: the withdrawal is done once
    assert refresh(config, SETTINGS).message.startswith("nothing new")

    # (3) new files: continued pretraining from the first model; the replay leaves the withdrawn out
    write_paragraphs(src / "moby.txt", paragraphs(shared_data / "gutenberg" / "pg2701_moby_dick.txt", skip=200)[:120])
    third = refresh(config, SETTINGS)
    assert third.version == "v0003" and third.new_docs_kept > 50 and third.withdrawn == 0, third.message
    assert third.init_from == str(Path(first.model) / "checkpoints" / "best")
    v3 = read_latest(work)
    assert not expected & set(corpus(v3)["id"].to_list())
    mix_docs = pl.read_parquet(Path(v3["refresh"]["tokens"]) / "docs.parquet")
    assert mix_docs.filter(pl.col("origin") > 0).height > 0  # there was a replay
    assert not expected & set(mix_docs["id"].to_list())
    assert read_record(v3["withdrawn"]).equals(record)  # the record follows the versions
    # its model card says it still contains what it inherited from the first model
    cards = [p.read_text() for p in (work / "exports").rglob("README.md")]
    mine = [c for c in cards if Path(third.model).name in c]
    assert mine, "the third model was exported with a model card"
    assert f"**This model contains {len(in_first)} of them.**" in mine[0]
    assert "| tokenize |" in mine[0]  # the refresh's model card has the new tokens' energy


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
