from __future__ import annotations

from pathlib import Path

import pytest

from lmwright.flows.config import ConfigError, CurateConfig, load_config


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

    from lmwright.flows.config import PipelineConfig

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


# -- run parameters: the Prefect form and `prefect deployment run -p` -----------------------------


def test_form_schema_accepts_a_source_given_as_a_string() -> None:
    """The server checks run parameters against the flow's schema, not the model: it must say a string is a path."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from lmwright.flows.curate import curate

    # the config's own schema (a YAML preset checked by an editor, an API client) says so too
    assert validate({"ingest": {"sources": ["/data/udhr"]}}, CurateConfig.model_json_schema()) == []
    schema = parameter_schema(curate).model_dump_for_openapi()
    assert validate({"sources": ["/data/udhr", {"path": "/data/c4.jsonl", "format": "jsonl"}]}, schema) == []
    assert validate({"sources": [7]}, schema), "a number is not a source"
    assert curate.validate_parameters({"sources": ["/data/udhr"]})["sources"][0].path == "/data/udhr"


def test_partial_config_is_merged_over_the_preset(tmp_path: Path) -> None:
    from lmwright.flows.config import PipelineConfig
    from lmwright.flows.forms import PipelineForm, resolve_config

    tiny = load_config(PipelineConfig, "tiny")
    form = PipelineForm.model_validate({"quality": {"gopher_quality": {"min_doc_words": 20}}})
    cfg = resolve_config(PipelineConfig, form, "tiny", workdir="/tmp/w", sources=["/data/a.txt"])
    assert cfg.quality.gopher_quality.min_doc_words == 20
    # everything else is the preset's, not the model's web defaults
    assert cfg.quality.gopher_quality.max_non_alpha_words_ratio == tiny.quality.gopher_quality.max_non_alpha_words_ratio
    assert cfg.quality.gopher_repetition == tiny.quality.gopher_repetition and cfg.pretrain == tiny.pretrain
    assert cfg.workdir == "/tmp/w" and [s.path for s in cfg.ingest.sources] == ["/data/a.txt"]
    # a value replaces the preset's null, {} switches an optional section on, null switches it off,
    # a list replaces the preset's list
    changes = {"quality": {"fineweb": {"line_punct_thr": 0.12}}, "finetune": {"lora": {}}, "langid": {"languages": ["de"]}}
    on = resolve_config(PipelineConfig, PipelineForm.model_validate(changes), "tiny")
    assert tiny.quality.fineweb.line_punct_thr is None and on.quality.fineweb.line_punct_thr == 0.12
    assert tiny.finetune.lora is None and on.finetune.lora is not None and on.langid.languages == ["de"]
    with_lora = tmp_path / "lora.yaml"
    with_lora.write_text("finetune:\n  lora: {}\n")
    off = resolve_config(PipelineConfig, PipelineForm.model_validate({"finetune": {"lora": None}}), str(with_lora))
    assert resolve_config(PipelineConfig, None, str(with_lora)).finetune.lora is not None and off.finetune.lora is None


def test_a_full_config_object_passes_through_the_form_unchanged() -> None:
    from lmwright.flows.config import PipelineConfig
    from lmwright.flows.curate import curate
    from lmwright.flows.forms import resolve_config
    from lmwright.flows.pipeline import pipeline

    cfg = load_config(PipelineConfig, "tiny", ["quality.gopher_quality.min_doc_words=3"], workdir="/tmp/x")
    assert resolve_config(PipelineConfig, pipeline.validate_parameters({"config": cfg})["config"]) == cfg
    # the pipeline hands its whole config to curate: curate keeps its own sections of it
    curated = resolve_config(CurateConfig, curate.validate_parameters({"config": cfg})["config"])
    assert curated == load_config(CurateConfig, "tiny", ["quality.gopher_quality.min_doc_words=3"], workdir="/tmp/x")


def test_form_errors_name_the_field_and_the_preset() -> None:
    from lmwright.flows.forms import CurateForm, resolve_config

    with pytest.raises(ConfigError, match=r"preset tiny .*\n.*langid.min_prob"):
        resolve_config(CurateConfig, {"langid": {"min_prob": 7}}, "tiny")
    with pytest.raises(ValueError, match="langid.min_prob"):  # the form's own check (the UI's) says it first
        CurateForm.model_validate({"langid": {"min_prob": 7}})
    with pytest.raises(ConfigError, match="no preset"):
        resolve_config(CurateConfig, None, "no-such-preset")


def test_run_forms_show_each_setting_once_and_no_schedule() -> None:
    """workdir and sources are parameters of their own; cron/timezone belong to the deployment's schedule."""
    from prefect.utilities.callables import parameter_schema

    from lmwright.flows.refresh import refresh

    schema = parameter_schema(refresh).model_dump_for_openapi()
    defs = schema["definitions"]
    config_def = defs[schema["properties"]["config"]["anyOf"][0]["$ref"].split("/")[-1]]
    settings_def = defs[schema["properties"]["settings"]["anyOf"][0]["$ref"].split("/")[-1]]
    ingest_def = defs[config_def["properties"]["ingest"]["anyOf"][0]["$ref"].split("/")[-1]]
    assert "workdir" not in config_def["properties"] and "sources" not in ingest_def["properties"]
    assert "refresh" not in config_def["properties"]  # shown once, as settings
    assert "carbon_window" not in config_def["properties"]  # a refresh waits for settings.carbon_window only
    assert not {"cron", "timezone"} & set(settings_def["properties"])
    assert list(schema["properties"]) == ["config", "settings", "preset", "workdir", "sources"]


def test_form_puts_often_changed_fields_first_and_long_lists_last() -> None:
    from lmwright.flows.forms import CurateForm

    schema = CurateForm.model_json_schema()
    sections = list(schema["properties"])
    assert sections.index("quality") < sections.index("license") and sections[-1] == "license"
    license_fields = list(schema["$defs"]["LicenseParamsForm"]["properties"])
    assert license_fields[-3:] == ["pretraining", "finetuning", "optout_paths"]


def test_a_mapping_value_replaces_the_presets_while_sections_merge(tmp_path: Path) -> None:
    """pretrain.model.overrides is a value (a mapping of GPT fields), not a section: a run's replaces the preset's."""
    from lmwright.flows.config import PipelineConfig
    from lmwright.flows.forms import resolve_config

    preset = tmp_path / "wide.yaml"
    preset.write_text("pretrain:\n  lr: 0.002\n  model: {preset: tiny, overrides: {n_layer: 4}}\n")
    cfg = resolve_config(PipelineConfig, {"pretrain": {"model": {"overrides": {"n_embd": 64}}}}, str(preset))
    assert cfg.pretrain.model.overrides == {"n_embd": 64} and cfg.pretrain.model.preset == "tiny" and cfg.pretrain.lr == 0.002


def test_flows_start_from_the_tiny_preset_like_the_cli() -> None:
    from lmwright.flows.config import PipelineConfig
    from lmwright.flows.forms import DEFAULT_PRESET, resolve_config
    from lmwright.flows.pipeline import pipeline

    params = pipeline.validate_parameters({"config": {"pretrain": {"max_steps": 7}}})
    cfg = resolve_config(PipelineConfig, params["config"], params["preset"])
    assert params["preset"] == DEFAULT_PRESET == "tiny"
    assert cfg.pretrain.max_steps == 7 and cfg.tokenize == load_config(PipelineConfig, "tiny").tokenize


def test_refresh_settings_of_a_run_merge_over_the_presets_refresh_section(tmp_path: Path) -> None:
    from lmwright.flows.config import PipelineConfig
    from lmwright.flows.forms import resolve_config, resolve_settings
    from lmwright.flows.refresh import refresh

    preset = tmp_path / "nightly.yaml"
    preset.write_text("refresh:\n  replay_seed: 7\n  cron: '0 3 * * *'\n  timezone: Europe/Berlin\n")
    params = refresh.validate_parameters({"settings": {"replay_fraction": 0.2}, "preset": str(preset)})
    settings = resolve_settings(resolve_config(PipelineConfig, params["config"], params["preset"]), params["settings"])
    assert settings.replay_fraction == 0.2 and settings.replay_seed == 7 and settings.timezone == "Europe/Berlin"


def test_only_runners_that_are_built_and_tested_are_offered() -> None:
    """Ray was advertised without an extra or a test: the config no longer offers it."""
    with pytest.raises(ConfigError, match="runner.kind"):
        load_config(CurateConfig, "tiny", ["runner.kind=ray"])
