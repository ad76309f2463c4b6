from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import ConfigError, CurateConfig, load_config


def test_presets_validate() -> None:
    tiny = load_config(CurateConfig, "tiny")
    assert tiny.ingest.sources[0].path == "builtin:pydocs"
    assert load_config(CurateConfig, "small").ingest.sources[1].path == "builtin:pydocs-packages"


def test_partial_sections_keep_their_defaults() -> None:
    cfg = CurateConfig.model_validate({"quality": {}, "dedup": {"threshold": 0.9}})
    assert cfg.dedup.threshold == 0.9
    assert cfg.dedup.num_perm == CurateConfig().dedup.num_perm
    assert cfg.ingest.sources  # the built-in corpus by default


def test_overrides_parse_values_as_yaml() -> None:
    cfg = load_config(CurateConfig, "tiny", ["langid.languages=[en, de]", "ingest.shard_docs=7", "workdir=/tmp/x"])
    assert cfg.langid.languages == ["en", "de"] and cfg.ingest.shard_docs == 7 and cfg.workdir == "/tmp/x"


def test_invalid_config_names_every_bad_field_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  shard_docs: -1\n  text_split: sentences\nlangid:\n  min_prob: 7\ndedup:\n  typo_field: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(CurateConfig, str(bad))
    msg = str(e.value)
    assert str(bad) in msg
    for field in ("ingest.shard_docs", "ingest.text_split", "langid.min_prob", "dedup.typo_field"):
        assert field in msg, msg


def test_unknown_section_and_bad_override_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(CurateConfig, None, ["qualty.x=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(CurateConfig, None, ["noequals"])
    with pytest.raises(ConfigError, match="no preset"):
        load_config(CurateConfig, "nonexistent-preset")


def test_every_config_section_rejects_unknown_fields() -> None:
    """A typo anywhere in a config must fail loudly, not be ignored."""
    from pydantic import BaseModel

    from flows.config import PipelineConfig

    def models(m: type[BaseModel], seen: set) -> None:
        if m in seen:
            return
        seen.add(m)
        assert m.model_config.get("extra") == "forbid", m.__name__
        for f in m.model_fields.values():
            for t in getattr(f.annotation, "__args__", (f.annotation,)):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    models(t, seen)

    models(PipelineConfig, set())
