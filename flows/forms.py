"""The parameters of a run: a preset by name, plus what this run changes.

Prefect replaces a run's parameters per top-level key (the deployment's ``config`` is dropped
whole when a run sends ``config={"quality": ...}``). So the flows take:

- ``config``: a *partial* config merged over the preset, section by section. Every field of its form is
  optional; an empty field means "the preset's value", so the form never shows web defaults
  that the preset overrides. A full config object (the CLI, subflows) is accepted as well.
- ``preset``: a preset name (``tiny``, the default) or a YAML file, read when the run starts.
- ``workdir`` and ``sources``: what nearly every run names; parameters of their own, so a run
  that changes a threshold keeps the deployment's workdir and sources. They are hidden from
  ``config``'s form (and rejected there by the server's schema check), so nothing shows twice.

Precedence, lowest first: the preset, ``config``, then ``workdir``/``sources`` when given.
"""

from __future__ import annotations

import copy
from types import UnionType
from typing import Annotated, Any, Iterable, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema

from lmwright.flows.config import CurateConfig, PipelineConfig, build_config, preset_path, read_yaml
from lmwright.flows.config import _section_model as section_model
from lmwright.tasks.refresh.settings import RefreshSettings
from lmwright.tasks.curate.sources import SourceInput, SourceSpec

C = TypeVar("C", bound=BaseModel)
# What a run starts from unless it names another preset: the CLI's default (--config) too.
DEFAULT_PRESET = "tiny"

# Top-level sections in the order people change them (sections not named here follow them);
# the licence policy, with its two long lists of licences, comes last.
CURATE_ORDER = ("ingest", "langid", "quality", "dedup", "pii", "bias", "normalize", "bias_audit",
                "validation", "runner", "energy")
PIPELINE_ORDER = ("ingest", "pretrain", "finetune", "evaluate", "tokenize", "langid", "quality", "dedup", "pii",
                  "bias", "normalize", "bias_audit", "carbon_window", "validation", "runner", "energy")
LAST = ("license",)
# Parameters of their own, so hidden inside ``config``.
RUN_PARAMETERS = frozenset({"workdir", "ingest.sources"})
# cron and timezone are the deployment's schedule: a run's form cannot move it.
SCHEDULE_FIELDS = frozenset({"cron", "timezone"})


class FormBase(BaseModel):
    """A partial config: every field optional; only the fields a caller set are merged."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _from_full_config(cls, value: object) -> object:
        # A full config object (CLI, a parent flow) sets every field this form knows.
        if isinstance(value, BaseModel) and not isinstance(value, FormBase):
            return value.model_dump(include=set(cls.model_fields))
        return value


def _is_collection(annotation: Any) -> bool:
    kinds = (list, dict, set, tuple, frozenset)
    if get_origin(annotation) in kinds or annotation in kinds:
        return True
    return get_origin(annotation) in (Union, UnionType) and any(_is_collection(a) for a in get_args(annotation))


def _field_order(model: type[BaseModel], first: Iterable[str], last: Iterable[str]) -> list[str]:
    """``first`` as given, then plain values, then sections, then lists (long lists last), then ``last``."""
    head = [name for name in first if name in model.model_fields]
    tail = [name for name in last if name in model.model_fields and name not in head]

    def rank(name: str) -> int:
        annotation = model.model_fields[name].annotation
        return 2 if _is_collection(annotation) else 1 if section_model(annotation) else 0

    rest = [name for name in model.model_fields if name not in head and name not in tail]
    return head + sorted(rest, key=rank) + tail


_FORMS: dict[tuple[type[BaseModel], frozenset[str], tuple[str, ...]], type[FormBase]] = {}


def form_model(
    model: type[BaseModel], hidden: Iterable[str] = (), first: Iterable[str] = (), last: Iterable[str] = ()
) -> type[FormBase]:
    """The partial twin of ``model``: same fields, constraints and descriptions, all defaulting to None.

    ``hidden`` (dotted paths) are accepted from Python but left out of the JSON schema, so the
    Prefect form does not show them and the server's parameter check rejects them.
    """
    hidden, first, last = frozenset(hidden), tuple(first), tuple(last)
    key = (model, hidden, first + ("|",) + last)
    if key in _FORMS:
        return _FORMS[key]
    fields: dict[str, Any] = {}
    for name in _field_order(model, first, last):
        info = model.model_fields[name]
        section = section_model(info.annotation)
        if section is not None:
            inner = {h.split(".", 1)[1] for h in hidden if h.startswith(f"{name}.")}
            annotation: Any = form_model(section, inner)
        elif info.metadata:
            annotation = Annotated[(info.annotation, *info.metadata)]  # keep ge/le/... for the form's checks
        else:
            annotation = info.annotation
        annotation = annotation | None
        if name in hidden:
            annotation = SkipJsonSchema[annotation]
        fields[name] = (annotation, Field(None, description=info.description))
    suffix = "Form" if not hidden else "RunForm"
    form = create_model(f"{model.__name__}{suffix}", __base__=FormBase, __doc__=model.__doc__, **fields)
    _FORMS[key] = form
    return form


CurateForm = form_model(CurateConfig, RUN_PARAMETERS, CURATE_ORDER, LAST)
# The pipeline never reads the refresh section; a refresh run takes it as ``settings``.
PipelineForm = form_model(PipelineConfig, RUN_PARAMETERS | {"refresh"}, PIPELINE_ORDER, LAST)
# A refresh waits for its own settings.carbon_window; the pipeline's carbon_window would do nothing there.
RefreshForm = form_model(PipelineConfig, RUN_PARAMETERS | {"refresh", "carbon_window"}, PIPELINE_ORDER, LAST)
RefreshSettingsForm = form_model(RefreshSettings, SCHEDULE_FIELDS)


def shown_fields(form: type[FormBase]) -> set[str]:
    """The top-level fields ``form`` shows (and the server accepts): all but the hidden ones."""
    return set(form.model_json_schema()["properties"])


def merge_config(model: type[BaseModel], base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, section by section of ``model``: a section merges key by key;
    any other value (a number, a list, a mapping such as ``model.overrides``, null) replaces."""
    merged = dict(base)
    for key, value in over.items():
        info = model.model_fields.get(key)
        section = section_model(info.annotation) if info else None
        old = base.get(key)
        if section is not None and isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge_config(section, old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_fields(config: BaseModel | dict[str, Any] | None) -> dict[str, Any]:
    """What a caller actually gave: a form's set fields, a full config's every field, a dict as is."""
    if config is None:
        return {}
    if isinstance(config, FormBase):
        return config.model_dump(exclude_unset=True)
    if isinstance(config, BaseModel):
        return config.model_dump()
    return dict(config)


def resolve_config(
    model: type[C],
    config: BaseModel | dict[str, Any] | None = None,
    preset: str | None = None,
    workdir: str | None = None,
    sources: list[SourceSpec] | list[str] | None = None,
) -> C:
    """The config a run uses: the preset, ``config`` merged over it, then ``workdir``/``sources``."""
    path = preset_path(preset) if preset else None
    data: dict[str, Any] = read_yaml(path) if path else {}
    data = merge_config(model, data, set_fields(config))
    if workdir:
        data["workdir"] = workdir
    if sources:
        specs = [s.model_dump() if isinstance(s, SourceSpec) else s for s in sources]
        data["ingest"] = {**(data.get("ingest") or {}), "sources": specs}
    origin = f"preset {preset} ({path}) with the run's parameters" if path else "the run's parameters"
    return build_config(model, data, origin)


def resolve_settings(config: PipelineConfig, settings: BaseModel | dict[str, Any] | None) -> RefreshSettings:
    """The refresh settings of a run: the config's ``refresh`` section with ``settings`` merged over it."""
    data = merge_config(RefreshSettings, config.refresh.model_dump(), set_fields(settings))
    return build_config(PipelineConfig, {"refresh": data}, "the run's settings").refresh


def run_parameters(config: CurateConfig, form: type[FormBase] = CurateForm, preset: str | None = None) -> dict[str, Any]:
    """A full config as the parameters of a run of the flow whose ``config`` is ``form``, for API callers."""
    data = config.model_dump(mode="json", include=shown_fields(form))
    data["ingest"].pop("sources")
    params: dict[str, Any] = {"config": data, "workdir": config.workdir, "sources": config.ingest.model_dump(mode="json")["sources"]}
    if preset:
        params["preset"] = preset
    return params


__all__ = [
    "DEFAULT_PRESET",
    "CurateForm",
    "PipelineForm",
    "RefreshForm",
    "RefreshSettingsForm",
    "SourceInput",
    "merge_config",
    "form_model",
    "resolve_config",
    "resolve_settings",
    "run_parameters",
    "shown_fields",
]
