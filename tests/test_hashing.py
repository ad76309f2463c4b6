"""The document unit hash: the one function behind every per-document choice, pinned on fixed ids.

The expected values were computed with the four copies the hash replaced (tokenize's split,
the mixture's order, the bias group cap, the refresh's replay sample): a change here would
move documents between splits and change every token dataset built before it.
"""

from __future__ import annotations

import polars as pl

from lmwright.tasks.core.hashing import doc_hash, unit_hash
from lmwright.tasks.curate.bias.filter import BiasParams, apply_bias
from lmwright.tasks.curate.mixture import MixtureParams, mixture_plan
from lmwright.tasks.train.token_dataset import assign_split

IDS = ["pydocs:0", "doc-1", "pride.txt:17", "ü-ñ-文", ""]
EXPECTED = {
    "split:0": [12518027132045052403, 13036636192248555257, 17991813485643139328, 12890965789633948394, 9290962255097618383],
    "mix:0": [16766368062877972146, 370822378796425633, 17281080373594024640, 9014471846150240430, 16950540727266120083],
    "bias_group_cap:gender": [3282492044289388237, 11209806889004119072, 7278475300579142866, 10525661936175472882,
                              16638720272678895137],
    "replay:0:abc:train": [6087296213256390043, 13756108353845278516, 2732011280704341082, 7928559256386566449,
                           15975435730998021095],
}


def test_doc_hash_and_unit_hash_keep_their_values_on_fixed_ids() -> None:
    for salt, expected in EXPECTED.items():
        assert [doc_hash(salt, i) for i in IDS] == expected, salt
        assert [unit_hash(salt, i) for i in IDS] == [h / 2**64 for h in expected], salt
    assert unit_hash("split:0", "pydocs:0") == 0.6786036105897867
    assert all(0.0 <= unit_hash(s, i) < 1.0 for s in EXPECTED for i in IDS)


def test_splits_mixtures_and_the_group_cap_choose_the_same_documents_as_before() -> None:
    ids = [f"doc-{i}" for i in range(24)]
    val = [0, 3, 10, 12, 14, 15, 18]
    assert assign_split(ids, 0.25, 7) == ["val" if i in val else "train" for i in range(24)]

    docs = pl.DataFrame({"id": ids, "source": ["a"] * 12 + ["b"] * 12, "lang": "en", "n_tokens": [10 + i for i in range(24)]})
    plan = mixture_plan(docs, MixtureParams(source_weights={"a": 1.5, "b": 0.5}, seed=3))
    assert plan["repeats"].to_list() == [2, 1, 1, 1, 1, 2, 2, 1, 2, 2, 2, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1]

    texts = ["she and her sister " * 3] * 30 + ["he and his brother " * 3] * 10
    capped = apply_bias(
        pl.DataFrame({"id": [f"b-{i}" for i in range(40)], "text": texts}),
        BiasParams(max_group_share=0.5, group_cap_min_docs=10, toxicity_threshold=None),
    )
    dropped = capped.filter(pl.col("reason") == "bias_group_cap")["id"].to_list()
    assert dropped == [f"b-{i}" for i in (1, 2, 3, 4, 6, 7, 8, 11, 12, 13, 15, 18, 21, 22, 23, 26, 27, 28, 29)]
