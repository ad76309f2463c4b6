"""tokenize: byte-level BPE, exact round trip, disjoint split by id hash, packed arrays, caching."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from data_quality import DataQualityError, ValidationSettings
from tasks.dataset import DOC_SCHEMA, DatasetRef, write_manifest, write_shard
from tasks.tokenize import (
    SpecialTokens,
    TokenDatasetRef,
    TokenizeParams,
    assign_split,
    encode_sft,
    load_tokenizer,
    run_tokenize,
    token_dtype,
    train_bpe,
    validate_token_dataset,
)

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


def make_corpus(root: Path, texts: list[str], shard_docs: int = 80) -> DatasetRef:
    out = root / "corpus"
    shards = []
    for k, lo in enumerate(range(0, len(texts), shard_docs)):
        chunk = texts[lo : lo + shard_docs]
        kept = pl.DataFrame(
            {
                "id": [f"doc-{lo + i:04d}" for i in range(len(chunk))],
                "text": chunk,
                "source": ["test"] * len(chunk),
                "uri": [f"test#{lo + i}" for i in range(len(chunk))],
                "license": [None] * len(chunk),
            },
            schema=DOC_SCHEMA,
        )
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
    ref = state.result()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])), limit=200
        )
    return ref, {r.name: r.state.name for r in runs}


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
