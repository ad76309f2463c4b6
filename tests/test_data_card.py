"""The data card of a curated corpus: a Hub dataset header, the thresholds that ran, redacted examples of what was
removed, every table once, and pictures beside it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lmwright.flows.config import CurateConfig, load_config
from lmwright.flows.curate import curate

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture()
def curated(tmp_path: Path, shared_data: Path) -> Path:
    """Real C4 documents, one planted duplicate, and a too-short document holding an e-mail address."""
    src = tmp_path / "src"
    src.mkdir()
    docs = [json.loads(line) for line in (shared_data / "web" / "c4_en_sample_olmo.jsonl").read_text().splitlines()][:20]
    rows = [{"id": f"c4-{i}", "text": d["text"]} for i, d in enumerate(docs + [docs[0]])]
    rows.append({"id": "short", "text": "Write to jane.doe@example.org today."})
    (src / "c4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(CurateConfig, "tiny", [f"ingest.sources=[{src}]"], workdir=str(tmp_path / "work"))
    return curate(config).corpus.dir


def test_the_data_card_is_publishable(curated: Path) -> None:
    from huggingface_hub import DatasetCard

    text = (curated / "card.md").read_text()
    card = DatasetCard(text)
    assert card.data.language == ["en"] and card.data.task_categories == ["text-generation"]
    assert card.data.size_categories == ["n<1K"] and card.data.pretty_name.startswith("lmwright corpus: ")

    # the thresholds that ran, and which of them the tiny preset relaxed
    assert "| quality.gopher_quality.max_non_alpha_words_ratio | 0.6 | 0.8 |" in text

    # an example per reason, personal data replaced
    examples = text.split("## Examples of removed documents", 1)[1].split("\n## ", 1)[0]
    assert "| quality | gopher_short_doc |" in examples and "| dedup | dedup_exact |" in examples
    assert "jane.doe@example.org" not in examples and "<EMAIL>" in examples

    # every table once: no heading twice, stage seconds only in the energy table
    headings = re.findall(r"^#+ .*$", text, flags=re.M)
    assert len(headings) == len(set(headings)), headings
    assert "| stage | in | kept | rejected | top reasons |\n" in text

    # pictures beside the card, each shown in it
    for name in ("funnel", "languages", "lengths", "duplicates"):
        png = curated / f"card_{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"](card_{name}.png)" in text
