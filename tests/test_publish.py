"""``lmwright publish``: the export is checked and listed before anything is uploaded; nothing here uses the network."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import EvalResult, ModelCardData

from lmwright.deployments.cli import main
from tests.test_generate import make_workdir


def card(license: str | None = "apache-2.0", results: bool = True, body: str = "# tiny-model\n\n![loss](loss_pretrain.png)\n") -> str:
    evals = [EvalResult(task_type="text-generation", dataset_type="heldout", dataset_name="held-out", metric_type="val_loss",
                        metric_value=3.2)] if results else None
    header = ModelCardData(model_name="tiny-model", license=license, eval_results=evals, language=["en"]).to_yaml()
    return f"---\n{header.strip()}\n---\n\n{body}"


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    _, hf_dir, _ = make_workdir(tmp_path / "w")
    (hf_dir / "README.md").write_text(card())
    (hf_dir / "loss_pretrain.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return hf_dir


def one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["publish", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmwright: "), err
    return err[0]


def test_a_dry_run_lists_every_file_and_uploads_nothing(export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", str(export), "--repo-id", "me/tiny", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == sorted(p.name for p in export.iterdir())
    assert "model.safetensors" in out and "README.md" in out and "loss_pretrain.png" in out
    assert "would upload" in err and "to me/tiny (private)" in err


@pytest.mark.parametrize("text, says", [
    (card(license=None), "README.md: YAML header: no license"),
    (card(results=False), "README.md: YAML header: model-index has no results"),
    (card(body="# tiny-model\n\nsee [the data card](data_card.md#bias)\n"), "README.md:"),
])
def test_a_card_the_hub_would_show_broken_is_refused(export: Path, capsys, text: str, says: str) -> None:
    (export / "README.md").write_text(text)
    line = one_line_error(capsys, str(export), "--repo-id", "me/tiny", "--dry-run")
    assert says in line and str(export) in line
    if "data_card" in text:
        assert "links to data_card.md, which is not in the export" in line


def test_missing_weights_are_named(export: Path, capsys) -> None:
    (export / "model.safetensors").unlink()
    assert f"{export / 'model.safetensors'}: missing" in one_line_error(capsys, str(export), "--repo-id", "me/tiny", "--dry-run")


def test_an_upload_without_a_token_says_how_to_get_one(export: Path, capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cached login either
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    assert "no Hugging Face token: set HF_TOKEN" in one_line_error(capsys, str(export), "--repo-id", "me/tiny")
