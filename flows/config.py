"""Typed flow configs, YAML presets and ``--set`` overrides.

Every section has defaults inside its model, so a partial config (a preset, a
Prefect UI form, a deployment's parameters replacing defaults per top-level key)
still validates. An invalid config raises one ``ConfigError`` naming every bad field.
"""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Any, Iterator, Literal, Sequence, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmwright.data_quality import ValidationSettings
from lmwright.tasks.core.shipped import CONFIG_DIR
from lmwright.tasks.curate.bias.audit import BiasAuditParams
from lmwright.tasks.curate.bias.filter import BiasParams
from lmwright.tasks.curate.dedup.params import DedupParams
from lmwright.tasks.core.energy import EnergySettings
from lmwright.tasks.train.carbon_window import CarbonWindow
from lmwright.tasks.core.errors import UserError
from lmwright.tasks.curate.ingest import IngestParams
from lmwright.tasks.curate.langid import LangidParams
from lmwright.tasks.curate.license.policy import LicenseParams
from lmwright.tasks.curate.normalize import NormalizeParams
from lmwright.tasks.curate.pii import PiiParams
from lmwright.tasks.curate.quality import QualityParams
from lmwright.tasks.refresh.settings import RefreshSettings
from lmwright.tasks.curate.retention import RejectedSettings, RetentionSettings
from lmwright.tasks.curate.urlfilter import UrlFilterParams
from lmwright.tasks.train.sft import SftDataParams
from lmwright.tasks.train.tokenize import TokenizeParams
from lmwright.tasks.train.params import EvalParams, LoraParams, TrainParams  # not tasks.train.loop/evaluate: those import torch

DEFAULT_WORKDIR = "lmwright-work"


class ConfigError(UserError, ValueError):
    """A config that does not validate; the message lists every bad field."""


class RunnerSettings(BaseModel):
    """Where shard-wise tasks run."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["threads", "dask"] = Field("threads", description="Task runner: threads (local) or dask (a local or remote cluster).")
    max_workers: int | None = Field(
        None, ge=1, description="Concurrent shard tasks (threads) or Dask workers; default: the number of CPU cores."
    )
    address: str | None = Field(None, description="Address of an existing Dask scheduler; default: a local cluster.")


class CurateConfig(BaseModel):
    """The curate flow: raw sources to a clean, deduplicated, validated corpus and its data card."""

    model_config = ConfigDict(extra="forbid")

    workdir: str = Field(DEFAULT_WORKDIR, description="Directory for datasets, caches, Data Docs and reports.")
    ingest: IngestParams = Field(default_factory=IngestParams, description="Sources and how files become documents.")
    urlfilter: UrlFilterParams = Field(
        default_factory=UrlFilterParams, description="URL block lists (adult, spam): pages rejected before any text processing."
    )
    license: LicenseParams = Field(default_factory=LicenseParams, description="License policy and the opt-out registry.")
    normalize: NormalizeParams = Field(default_factory=NormalizeParams, description="Unicode and whitespace normalization.")
    langid: LangidParams = Field(default_factory=LangidParams, description="Language identification and filtering.")
    quality: QualityParams = Field(default_factory=QualityParams, description="Gopher, C4 and FineWeb quality rules.")
    pii: PiiParams = Field(default_factory=PiiParams, description="Personal data redaction.")
    bias: BiasParams = Field(default_factory=BiasParams, description="Group-mention and toxicity signals; toxic and group-cap filters.")
    bias_audit: BiasAuditParams = Field(
        default_factory=BiasAuditParams, description="Representation and filter-fairness audit in the data card."
    )
    dedup: DedupParams = Field(default_factory=DedupParams, description="Exact and near-duplicate removal.")
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings, description="What the stages before pii keep of their documents once the corpus is finished."
    )
    rejected: RejectedSettings = Field(
        default_factory=RejectedSettings, description="Whether documents rejected before pii keep their raw text in rejected/."
    )
    validation: ValidationSettings = Field(default_factory=ValidationSettings, description="Great Expectations checks.")
    energy: EnergySettings = Field(default_factory=EnergySettings, description="Energy and CO2 measurement of every stage.")
    runner: RunnerSettings = Field(default_factory=RunnerSettings, description="Task runner for shard-wise stages.")


class FinetuneTrainParams(TrainParams):
    """Fine-tuning defaults: a lower learning rate, a short schedule, dropout, early stopping."""

    lr: float = Field(5e-4, gt=0, description="Peak learning rate (AdamW); lower than pretraining.")
    min_lr: float = Field(5e-5, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    eval_interval: int = Field(25, ge=1, description="Steps between validations (and early-stopping checks).")
    patience: int | None = Field(4, ge=1, description="Stop after this many validations without improvement.")
    checkpoint_interval: int = Field(50, ge=1, description="Steps between resumable checkpoints.")


class FinetuneConfig(BaseModel):
    """Stage two: from the pretrained checkpoint, on a narrower set of prompt/response pairs."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run fine-tuning after pretraining.")
    data: SftDataParams = Field(default_factory=SftDataParams, description="Prompt/response pairs.")
    train: FinetuneTrainParams = Field(default_factory=FinetuneTrainParams, description="Optimizer, schedule, budgets.")
    lora: LoraParams | None = Field(None, description="Train LoRA adapters instead of all weights (merged for export).")


class PipelineConfig(CurateConfig):
    """The whole pipeline: curate -> tokenize -> pretrain -> finetune -> evaluate -> export."""

    tokenize: TokenizeParams = Field(default_factory=TokenizeParams, description="BPE tokenizer, encoding, train/val split.")
    pretrain: TrainParams = Field(default_factory=TrainParams, description="Next-token pretraining.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="Supervised fine-tuning.")
    evaluate: EvalParams = Field(default_factory=EvalParams, description="Metrics, samples and the promotion gate.")
    refresh: RefreshSettings = Field(
        default_factory=RefreshSettings, description="Nightly refresh: schedule, replay of old data, cross-version dedup."
    )
    carbon_window: CarbonWindow | None = Field(
        None, description="Start training only in a low-carbon window (off-peak hours or an intensity profile); null: now."
    )


# Every flow config; a preset file may hold sections for any of them.
FLOW_CONFIGS: list[type[BaseModel]] = [CurateConfig, PipelineConfig]

C = TypeVar("C", bound=BaseModel)


def preset_path(name_or_path: str) -> Path:
    """``tiny`` -> configs/tiny.yaml unless a *file* ./tiny exists; anything else is a path to a YAML file.

    A directory never counts: a folder named like a preset in the current directory must
    not hide the preset, and a directory given as a path is an error, not IsADirectoryError.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    is_bare_name = "/" not in name_or_path and "\\" not in name_or_path and path.suffix not in (".yaml", ".yml")
    if is_bare_name and (CONFIG_DIR / f"{name_or_path}.yaml").is_file():
        return CONFIG_DIR / f"{name_or_path}.yaml"
    if path.is_dir():
        raise ConfigError(f"config {name_or_path!r} is a directory; give a preset ({', '.join(known)}) or a YAML file")
    if path.suffix in (".yaml", ".yml"):
        return path  # read_yaml says it does not exist
    raise ConfigError(f"no preset {name_or_path!r} (known: {', '.join(known)}) and no such file")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not {type(data).__name__}")
    return data


# Where a config value came from, by dotted key path: ("langid", "min_prob") -> "--set 'langid.min_prob=3'".
Origins = dict[tuple[str, ...], str]


def apply_overrides(data: dict[str, Any], overrides: list[str], origins: Origins | None = None) -> dict[str, Any]:
    """``section.key=value`` (value parsed as YAML) into a nested dict; ``origins`` records each key's ``--set``."""
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {key} is not a section")
            node = child
        node[leaf] = value
        if origins is not None:
            origins[tuple(dotted.split("."))] = f"--set {item!r}"
    return data


def build_config(model: type[C], data: dict[str, Any], origin: str = "config", origins: Origins | None = None) -> C:
    """Validate ``data`` as ``model``; sections belonging to other flows are ignored, typos are not.

    ``origin`` names where ``data`` came from (a preset file, "parameters"); ``origins`` names
    the keys that came from elsewhere (``--set``), so every error blames the right place.
    """
    origins = origins or {}
    known_everywhere = {name for cfg in FLOW_CONFIGS for name in cfg.model_fields}
    unknown = sorted(set(data) - known_everywhere)
    if unknown:
        blamed = sorted({_origin_of(origins, [k], origin) for k in unknown})
        raise ConfigError(
            f"{'; '.join(blamed)}: unknown section(s) {', '.join(unknown)} (known: {', '.join(sorted(known_everywhere))})"
        )
    mine = {k: v for k, v in data.items() if k in model.model_fields}
    try:
        return model.model_validate(mine)
    except ValidationError as e:
        raise ConfigError(format_errors(e, origin, origins)) from None


def _origin_of(origins: Origins, loc: Sequence[Any], default: str) -> str:
    """The origin of the longest recorded prefix of ``loc`` (an override of a whole section covers its keys)."""
    parts = tuple(str(p) for p in loc)
    for n in range(len(parts), 0, -1):
        if parts[:n] in origins:
            return origins[parts[:n]]
    return default


def format_errors(error: ValidationError, origin: str, origins: Origins | None = None) -> str:
    """One line per bad field; the header names the origin when all errors share it, else each line does."""
    blamed = [_origin_of(origins or {}, err["loc"], origin) for err in error.errors()]
    problems = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        problems.append(f"{where}: {err['msg']}{got}")
    same = len(set(blamed)) == 1
    lines = [f"{blamed[0] if same else 'config'}: {len(problems)} invalid field(s):"]
    lines += [f"  {problem}" + ("" if same else f"  [from {where_from}]") for problem, where_from in zip(problems, blamed)]
    return "\n".join(lines)


def load_config(
    model: type[C],
    config: str | None = None,
    overrides: list[str] | None = None,
    **fields: Any,
) -> C:
    """Preset or YAML file, then ``--set`` overrides, then explicit fields (e.g. workdir)."""
    path = preset_path(config) if config else None
    data: dict[str, Any] = read_yaml(path) if path else {}
    origin = str(path) if path else "config"
    origins: Origins = {}
    data = apply_overrides(data, list(overrides or []), origins)
    for key, value in fields.items():
        if value is not None:
            data[key] = value
            origins[(key,)] = f"the {key} argument"
    return build_config(model, data, origin, origins)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a section field (``X`` or ``X | None``); None for a plain value or a list of models."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) not in (Union, UnionType):
        return None
    models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    others = [a for a in get_args(annotation) if a is not type(None) and a not in models]
    return models[0] if len(models) == 1 and not others else None


def config_keys(model: type[BaseModel], values: BaseModel | None = None, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """Every ``--set`` key of ``model``: (dotted key, value in ``values`` or the default, description).

    An optional section that is off (None) is listed itself, then its keys with their defaults,
    since ``--set section.key=...`` switches it on.
    """
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if values is not None:
            value = getattr(values, name)
        else:
            value = field.get_default(call_default_factory=True)
        section = _section_model(field.annotation)
        if section is None:
            yield key, value, field.description or ""
            continue
        if value is None:
            yield key, None, field.description or ""
        yield from config_keys(section, value if isinstance(value, BaseModel) else None, f"{key}.")
