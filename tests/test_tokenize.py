"""tokenize: byte-level BPE, exact round trip, disjoint split by id hash, packed arrays, caching."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.prefect_states import task_states
from prefect import flow

from lmwright.data_quality import DataQualityError, ValidationSettings
from lmwright.tasks.core.dataset import DOC_SCHEMA, DatasetRef, write_manifest, write_shard
from lmwright.models.tokenizer import SpecialTokens, load_tokenizer, token_dtype, train_bpe
from lmwright.tasks.train.sft import encode_sft
from lmwright.tasks.train.token_dataset import TokenDatasetRef, assign_split
from lmwright.tasks.train.tokenize import TokenizeParams, run_tokenize, validate_token_dataset

pytestmark = pytest.mark.usefixtures("prefect_harness")

UNICODE_DOCS = [
    "Café naïve façade — “quotes” and ‘single’… Ελληνικά, русский, עברית.",
    "Emoji 😀🎉👩‍👩‍👧 and CJK 日本語の文章です。中文句子。한국어 문장.",
    "Whitespace:\t tabs,  double  spaces, trailing   \r\nCRLF\n\n\nand a lone \u00a0nbsp ",
    "A document that mentions <|endoftext|> and <|user|> as plain text.",
    "",
]


def paragraphs(shared_data: Path, n: int) -> list[str]:
    text = (shared_data / "gutenberg" / "pg1342_pride_and_prejudice.txt").read_text()
    body = text[text.index("Chapter I.]") :]
    paras = [p.strip() for p in body.split("\n\n") if len(p.strip()) > 80]
    return paras[:n]


def make_corpus(
    root: Path,
    texts: list[str],
    shard_docs: int = 80,
    sources: list[str] | None = None,
    langs: list[str | None] | None = None,
) -> DatasetRef:
    out = root / "corpus"
    shards = []
    for k, lo in enumerate(range(0, len(texts), shard_docs)):
        chunk = texts[lo : lo + shard_docs]
        n = len(chunk)
        cols: dict[str, list] = {
            "id": [f"doc-{lo + i:04d}" for i in range(n)],
            "text": chunk,
            "source": sources[lo : lo + n] if sources else ["test"] * n,
            "uri": [f"test#{lo + i}" for i in range(n)],
        }
        schema = dict(DOC_SCHEMA)
        if langs is not None:
            cols["lang"], schema["lang"] = langs[lo : lo + n], pl.String()
        kept = pl.DataFrame({c: cols.get(c, [None] * n) for c in schema}, schema=schema)
        nbytes = sum(len(t.encode()) for t in chunk)
        shards.append(write_shard(out, f"part-{k:05d}", "dedup", len(chunk), nbytes, kept, kept.clear(), 0.0))
    return write_manifest(out, "dedup", "corpus-fp", {}, "1", [], shards)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> DatasetRef:
    return make_corpus(tmp_path_factory.mktemp("tok"), paragraphs(shared_data, 200) + UNICODE_DOCS)


PARAMS = {"vocab_size": 1000, "val_fraction": 0.1, "roundtrip_sample_docs": 64}


@flow(persist_result=True)
def tokenize_flow(workdir: str, corpus: DatasetRef, params: TokenizeParams) -> TokenDatasetRef:
    return run_tokenize(workdir, corpus, params, ValidationSettings())


def run(workdir: Path, corpus: DatasetRef, params: TokenizeParams) -> tuple[TokenDatasetRef, dict[str, str]]:
    state = tokenize_flow(str(workdir), corpus, params, return_state=True)
    return state.result(), task_states(state.state_details.flow_run_id)


def decode_all(ref: TokenDatasetRef) -> dict[str, str]:
    tok, meta = ref.tokenizer(), ref.meta()
    arrays = {"train": ref.train_tokens(), "val": ref.val_tokens()}
    out = {}
    for doc_id, split, offset, n in ref.docs().select("id", "split", "offset", "tokens").iter_rows():
        ids = arrays[split][offset : offset + n]
        assert ids[-1] == meta["eot_id"]
        out[doc_id] = tok.decode(ids[:-1].tolist(), skip_special_tokens=False)
    return out


def test_tokenize_flow_round_trips_splits_caches_and_reuses(tmp_path: Path, corpus: DatasetRef) -> None:
    workdir = tmp_path / "work"
    params = TokenizeParams.model_validate(PARAMS)
    ref, states = run(workdir, corpus, params)
    assert set(states.values()) == {"Completed"}, states
    assert {"tokenize-train-tokenizer", "tokenize-encode-part-00000", "tokenize-pack"} <= set(states)
    assert (ref.dir / "manifest.json").is_file() and not (ref.dir / "shards").exists()

    # Exact round trip of every document, from the packed arrays (unicode, whitespace, marker text).
    docs = corpus.read()
    texts = dict(zip(docs["id"].to_list(), docs["text"].to_list()))
    assert decode_all(ref) == texts
    tok = ref.tokenizer()
    for t in UNICODE_DOCS:
        assert tok.decode(tok.encode(t).ids, skip_special_tokens=False) == t
    assert tok.token_to_id("<|endoftext|>") not in tok.encode(UNICODE_DOCS[3]).ids

    # Train/val: disjoint, covering every document, deterministic by id hash.
    index = ref.docs()
    train_ids = set(index.filter(pl.col("split") == "train")["id"])
    val_ids = set(index.filter(pl.col("split") == "val")["id"])
    assert not train_ids & val_ids and train_ids | val_ids == set(texts)
    assert 5 <= len(val_ids) <= 45
    ids = sorted(texts)
    assert [i for i, s in zip(ids, assign_split(ids, 0.1, 0)) if s == "val"] == sorted(val_ids)

    # Counts agree with meta.json and the manifest; ids fit the vocabulary.
    meta, manifest = ref.meta(), ref.manifest()
    train, val = ref.train_tokens(), ref.val_tokens()
    assert train.dtype == np.dtype("<u2") and meta["dtype"] == "uint16"
    assert len(train) == meta["tokens"]["train"] == manifest["tokens"]["train"]
    assert len(val) == meta["tokens"]["val"] == manifest["tokens"]["val"]
    assert meta["docs"] == {"train": len(train_ids), "val": len(val_ids)}
    assert int(max(train.max(), val.max())) < meta["vocab_size"] <= 1000
    assert meta["bytes"]["train"] + meta["bytes"]["val"] == sum(len(t.encode()) for t in texts.values())
    assert meta["bytes_per_token"]["train"] > 1 and meta["bytes_per_token"]["val"] > 1
    assert meta["special_tokens"]["<|endoftext|>"] == meta["eot_id"] == 0
    assert int((train == meta["eot_id"]).sum()) == len(train_ids)

    # An unchanged rerun does no work.
    again, states = run(workdir, corpus, params)
    assert again == ref
    assert set(states.values()) == {"Cached"}, states

    # Reusing the tokenizer skips training and gives the same tokens.
    reuse = TokenizeParams.model_validate({**PARAMS, "tokenizer_path": str(ref.dir / "tokenizer.json")})
    reused, states = run(workdir, corpus, reuse)
    assert reused.fingerprint != ref.fingerprint
    info = json.loads((reused.dir / "stats" / "tokenizer.json").read_text())
    assert info["source"] == "reused" and "sample_bytes" not in info
    assert reused.tokenizer().to_str() == ref.tokenizer().to_str()
    assert np.array_equal(reused.train_tokens(), train) and np.array_equal(reused.val_tokens(), val)


def test_validation_names_the_corruption(tmp_path: Path, corpus: DatasetRef) -> None:
    params = TokenizeParams.model_validate(PARAMS)
    ref, _ = run(tmp_path / "work", corpus, params)
    bad = tmp_path / "bad"
    shutil.copytree(ref.dir, bad)
    validate_token_dataset(bad, corpus, params, ValidationSettings())  # a good copy passes

    arr = np.memmap(bad / "train.bin", dtype="<u2", mode="r+")
    arr[3] = 60000  # an id far outside the vocabulary
    arr.flush()
    with pytest.raises(DataQualityError, match="token id 60000 >= vocab size"):
        validate_token_dataset(bad, corpus, params, ValidationSettings())

    shutil.copyfile(ref.dir / "train.bin", bad / "train.bin")
    with open(bad / "val.bin", "ab") as f:
        f.write(b"\x00\x00")  # one stray token
    with pytest.raises(DataQualityError, match="tokens on disk"):
        validate_token_dataset(bad, corpus, params, ValidationSettings())


def test_params_from_partial_dict_and_dtype() -> None:
    p = TokenizeParams.model_validate({"vocab_size": 70000, "special_tokens": {"pad": "<pad>"}})
    assert p.dtype() == np.dtype("<u4") and p.special_tokens.eot == "<|endoftext|>"
    assert TokenizeParams().dtype() == np.dtype("<u2") and token_dtype(65535) == np.dtype("<u2")
    for name, field in {**TokenizeParams.model_fields, **SpecialTokens.model_fields}.items():
        assert field.description, name
    with pytest.raises(ValueError):
        TokenizeParams.model_validate({"val_fraction": 1.0})


def test_encode_sft_masks_only_the_response(tmp_path: Path, shared_data: Path) -> None:
    texts = paragraphs(shared_data, 50)
    tok = train_bpe(texts, 600, 2, SpecialTokens())
    tok.save(str(tmp_path / "t.json"))
    tok = load_tokenizer(tmp_path / "t.json")
    pairs = [("Who is Mr. Darcy?", "A proud gentleman."), {"prompt": "Say <|assistant|>", "response": "Né 😀"}]
    ids, mask = encode_sft(tok, pairs, block_size=64)
    assert ids.shape == mask.shape == (2, 64) and ids.dtype == np.int64 and mask.dtype == np.uint8
    eot, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|pad|>")
    for row, (prompt, response) in zip(range(2), [pairs[0], ("Say <|assistant|>", "Né 😀")]):
        r, m = ids[row], mask[row]
        n = int((r != pad).sum())
        assert r[0] == tok.token_to_id("<|user|>") and (r[n:] == pad).all() and (m[n:] == 0).all()
        target = r[m == 1]
        assert target[-1] == eot
        assert tok.decode(target[:-1].tolist(), skip_special_tokens=False) == response
        assert tok.decode(r[:n][m[:n] == 0].tolist(), skip_special_tokens=False) == (
            f"<|user|>\n{prompt}\n<|assistant|>\n"
        )
        # the marker text inside the prompt is plain text, not the assistant marker id
        assert list(r[:n]).count(tok.token_to_id("<|assistant|>")) == 1
    # Right truncation keeps the template and cuts the response tail.
    short_ids, short_mask = encode_sft(tok, pairs[:1], block_size=12)
    assert short_ids.shape == (1, 12) and (short_ids[0] != pad).all()
    assert short_mask[0].sum() == 12 - int((short_mask[0] == 0).sum())
    assert encode_sft(tok, [], 8)[0].shape == (0, 8)


def test_max_docs_and_no_validation_split(tmp_path: Path, corpus: DatasetRef) -> None:
    params = TokenizeParams.model_validate({**PARAMS, "max_docs": 150, "val_fraction": 0.0})
    ref, _ = run(tmp_path / "work", corpus, params)
    meta, stats = ref.meta(), json.loads((ref.dir / "stats.json").read_text())
    assert meta["docs"] == {"train": 150, "val": 0} and meta["bytes_per_token"]["val"] is None
    assert stats["skipped_max_docs"] == corpus.manifest()["rows"] - 150
    assert ref.val_tokens().size == 0 and ref.train_tokens().size == meta["tokens"]["train"]
    assert set(ref.docs()["id"]) == {f"doc-{i:04d}" for i in range(150)}


# -- the data mix (tasks.curate.mixture) ------------------------------------------------------------


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> DatasetRef:
    """200 paragraphs over 3 shards: even ones from source A, odd ones from B; en/fr/unknown language."""
    texts = paragraphs(shared_data, 200)
    sources = ["A" if i % 2 == 0 else "B" for i in range(len(texts))]
    langs = ["fr" if i % 5 == 0 else None if i % 7 == 0 else "en" for i in range(len(texts))]
    return make_corpus(tmp_path_factory.mktemp("mix"), texts, shard_docs=70, sources=sources, langs=langs)


def split_copies(ref: TokenDatasetRef, split: str) -> list[np.ndarray]:
    """The .bin cut after every end-of-text: one array per document copy, in file order."""
    arr, eot = np.asarray(ref.tokens(split)), ref.meta()["eot_id"]
    ends = np.flatnonzero(arr == eot) + 1
    assert ends.size == 0 or ends[-1] == arr.size
    return np.split(arr, ends[:-1]) if ends.size else []


def test_mixture_weights_give_the_promised_tokens(tmp_path: Path, two_sources: DatasetRef) -> None:
    from lmwright.tasks.curate.mixture import MixtureParams, expected_tokens

    mix = {"source_weights": {"A": 2.0, "B": 0.5}}
    ref, states = run(tmp_path / "work", two_sources, TokenizeParams.model_validate({**PARAMS, "mixture": mix}))
    assert set(states.values()) == {"Completed"}, states
    base, _ = run(tmp_path / "work", two_sources, TokenizeParams.model_validate(PARAMS))
    assert base.fingerprint != ref.fingerprint
    assert base.tokenizer().to_str() == ref.tokenizer().to_str()

    corpus = two_sources.read()
    source_of = dict(zip(corpus["id"].to_list(), corpus["source"].to_list()))
    index = ref.docs()
    assert index.columns == ["id", "split", "offset", "tokens", "bytes", "source", "lang", "repeats"]
    assert index.select("id", "source").rows() == [(i, source_of[i]) for i in index["id"]]
    assert set(index["lang"].to_list()) == {"en", "fr", None}
    train, val = index.filter(pl.col("split") == "train"), index.filter(pl.col("split") == "val")

    # Every A document twice (two epochs); B documents once or not at all; val never weighted.
    assert set(train.filter(pl.col("source") == "A")["repeats"]) == {2}
    assert set(train.filter(pl.col("source") == "B")["repeats"]) == {0, 1}
    assert set(val["repeats"]) == {1}
    left_out = train.filter(pl.col("repeats") == 0)
    assert left_out.height > 0 and left_out["offset"].null_count() == left_out.height
    assert ref.val_tokens().tobytes() == base.val_tokens().tobytes()
    assert (index.filter(pl.col("split") == "val").select("id", "offset").rows()
            == base.docs().filter(pl.col("split") == "val").select("id", "offset").rows())

    # What train.bin really holds, by decoding every copy: tokens per source.
    tok, texts = ref.tokenizer(), dict(zip(corpus["id"].to_list(), corpus["text"].to_list()))
    source_of_text = {texts[i]: source_of[i] for i in train["id"]}
    on_disk = {"A": 0, "B": 0}
    for copy in split_copies(ref, "train"):
        on_disk[source_of_text[tok.decode(copy[:-1].tolist(), skip_special_tokens=False)]] += copy.size
    meta = ref.meta()
    assert sum(on_disk.values()) == ref.train_tokens().size == meta["tokens"]["train"] == ref.manifest()["tokens"]["train"]
    assert meta["docs"]["train"] == train.height  # distinct documents; copies are in the report

    # ...is what the plan promised: weight x tokens per (source, lang) group within half a document.
    before = {s: int(train.filter(pl.col("source") == s)["tokens"].sum()) for s in ("A", "B")}
    promised = expected_tokens(train.rename({"tokens": "n_tokens"}), MixtureParams.model_validate(mix))
    assert on_disk["A"] == 2 * before["A"] == promised["A"]
    groups = train.filter(pl.col("source") == "B")["lang"].n_unique()
    longest = int(train.filter(pl.col("source") == "B")["tokens"].max())
    assert abs(on_disk["B"] - promised["B"]) <= groups * longest / 2
    assert abs(on_disk["B"] - 0.5 * before["B"]) < 0.1 * before["B"]

    # ...and what meta.json / stats.json report (the card reads meta["mixture"]).
    report = meta["mixture"]
    assert report["weighted"] and report["applies_to"] == "train" and report["params"]["source_weights"] == mix["source_weights"]
    assert report["tokens_after"] == sum(on_disk.values()) and report["tokens_before"] == sum(before.values())
    assert report["docs_after"] == int(train["repeats"].sum()) and report["docs_left_out"] == left_out.height
    total = sum(on_disk.values())
    for s in ("A", "B"):
        row = report["sources"][s]
        assert row["tokens_before"] == before[s] and row["tokens_after"] == on_disk[s]
        assert row["share_after"] == pytest.approx(on_disk[s] / total, abs=1e-6)
        assert abs(row["share_after"] - row["share_promised"]) <= groups * longest / 2 / total + 1e-6
    assert json.loads((ref.dir / "stats.json").read_text())["mixture"] == report
    assert meta["bytes"]["train"] == int((train["bytes"] * train["repeats"]).sum())

    # Each document decodes at its (first) offset; the epochs follow each other in pack order.
    arr = ref.train_tokens()
    for doc_id, offset, n in train.filter(pl.col("repeats") > 0).select("id", "offset", "tokens").iter_rows():
        assert tok.decode(arr[offset : offset + n - 1].tolist(), skip_special_tokens=False) == texts[doc_id]
    epoch0 = train.filter(pl.col("repeats") > 0)
    assert epoch0["offset"].to_list() == (epoch0["tokens"].cum_sum() - epoch0["tokens"]).to_list()
    second = int(epoch0["tokens"].sum())
    first_a = train.filter(pl.col("source") == "A").row(0, named=True)
    assert arr[second : second + first_a["tokens"]].tolist() == arr[first_a["offset"] : first_a["offset"] + first_a["tokens"]].tolist()

    # Same config, same bytes (a fresh workdir: nothing cached); another seed, another B subset.
    again, _ = run(tmp_path / "again", two_sources, TokenizeParams.model_validate({**PARAMS, "mixture": mix}))
    assert again.fingerprint == ref.fingerprint and again.dir != ref.dir
    assert again.train_tokens().tobytes() == ref.train_tokens().tobytes()
    assert again.docs().equals(index)
    other = {**mix, "seed": 1}
    reseeded, _ = run(tmp_path / "work", two_sources, TokenizeParams.model_validate({**PARAMS, "mixture": other}))
    kept = lambda r: set(r.docs().filter((pl.col("source") == "B") & (pl.col("repeats") > 0))["id"])  # noqa: E731
    assert kept(reseeded) != kept(ref)


def test_identity_mixture_packs_exactly_as_without_one(tmp_path: Path, two_sources: DatasetRef) -> None:
    """No weights (or weights of 1): train.bin is byte for byte the plain concatenation of before."""
    ref, _ = run(tmp_path / "work", two_sources, TokenizeParams.model_validate(PARAMS))
    tok, meta = ref.tokenizer(), ref.meta()
    corpus = two_sources.read()
    # The pre-mixture train.bin, rebuilt independently: every train document in corpus order + eot.
    ids, texts = corpus["id"].to_list(), corpus["text"].to_list()
    want = {"train": [], "val": []}
    for doc_id, text, split in zip(ids, texts, assign_split(ids, PARAMS["val_fraction"], 0)):
        want[split] += tok.encode(text, add_special_tokens=False).ids + [meta["eot_id"]]
    for split in ("train", "val"):
        assert ref.tokens(split).tobytes() == np.array(want[split], dtype="<u2").tobytes()
    index = ref.docs()
    assert set(index["repeats"]) == {1}
    assert not meta["mixture"]["weighted"] and meta["mixture"]["tokens_after"] == meta["tokens"]["train"]
    assert set(meta["mixture"]["sources"]) == {"A", "B"}
    assert meta["mixture"]["sources"]["A"]["share_after"] == meta["mixture"]["sources"]["A"]["share_before"]

    # Explicit weights of 1 are the identity too; weights that touch no document take the
    # weighted path (range copies) and must still give the same bytes and offsets.
    for mix in ({"source_weights": {"A": 1.0, "B": 1.0}}, {"source_weights": {"C": 3.0}, "seed": 7}):
        same, _ = run(tmp_path / "work", two_sources, TokenizeParams.model_validate({**PARAMS, "mixture": mix}))
        assert same.fingerprint != ref.fingerprint
        assert same.train_tokens().tobytes() == ref.train_tokens().tobytes()
        assert same.docs().equals(index)
        assert same.meta()["mixture"]["weighted"] == ("C" in mix["source_weights"])


@pytest.mark.parametrize(
    "tokens, expected",
    [
        ({"train": 300_000, "val": 15_000}, ("train", 0)),  # enough documents: the document split stands
        ({"train": 100_000, "val": 900}, ("train", 0)),  # small, but 900 tokens are 7 contexts of 128
        ({"train": 40_000, "val": 0}, ("train", 2_000)),  # one document, hashed to train: 5%
        ({"train": 0, "val": 40_000}, ("val", 2_000)),  # one document, hashed to val
        ({"train": 100_000, "val": 300}, ("train", 5_000)),  # a val split too small to validate on
        ({"train": 800, "val": 0}, ("train", 400)),  # tiny: at most half
    ],
)
def test_too_few_documents_move_the_split_inside_the_larger_side(tmp_path: Path, tokens: dict, expected: tuple) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"tokens": tokens, "split": {"val_fraction": 0.05}}))
    assert TokenDatasetRef.at(tmp_path).heldout_tail(block_size=128) == expected
