"""How big is a deployment's run form in the Prefect UI, before and after the preset + changes design?

Counts, per flow, from the parameter schema Prefect stores for the deployment (what the UI draws):

- fields: leaf inputs of the whole schema, $refs followed (the form fully expanded);
- shown: inputs drawn when the form opens (top-level parameters; an object parameter whose
  value is empty stays one collapsed row, one with a value is drawn whole);
- prefilled: values the deployment's parameters put into the form, each list item counted
  (the two 30-row licence lists were what made the curate form 16,000 px tall).

"before" is the earlier signature (``config: <whole config>``, refresh's ``settings``) with the
whole tiny preset as the deployment's parameters; "after" is the flows and ``lmwright serve
--config tiny`` of this checkout. Run from the repository root:

    python benchmarks/form_size.py
"""

from __future__ import annotations

from typing import Any

from prefect.utilities.callables import parameter_schema

from lmwright.deployments.serve import deployment_parameters
from lmwright.flows.config import CurateConfig, PipelineConfig, load_config
from lmwright.flows.curate import curate
from lmwright.flows.pipeline import Until, pipeline
from lmwright.flows.refresh import refresh
from lmwright.tasks.refresh.settings import RefreshSettings


def leaf_fields(schema: dict[str, Any]) -> int:
    """Inputs a form draws for ``schema`` fully expanded: leaves of its properties, $refs followed."""
    defs = schema.get("definitions") or schema.get("$defs") or {}

    def count(node: dict[str, Any], seen: tuple[str, ...]) -> int:
        if "$ref" in node:
            name = node["$ref"].split("/")[-1]
            return 0 if name in seen else count(defs[name], (*seen, name))
        if "properties" in node:
            return sum(count(child, seen) for child in node["properties"].values())
        branches = [b for b in node.get("anyOf", []) if b.get("type") != "null"]
        return max((count(b, seen) for b in branches), default=1)

    return count(schema, ())


def shown_fields(schema: dict[str, Any], parameters: dict[str, Any]) -> int:
    """Inputs drawn when the form opens: a parameter with a value is drawn whole, an empty one as one row."""
    defs = schema.get("definitions") or {}
    total = 0
    for name, prop in schema["properties"].items():
        value = parameters.get(name, prop.get("default"))
        total += leaf_fields({"definitions": defs, **prop}) if isinstance(value, dict) and value else 1
    return total


def prefilled(value: Any) -> int:
    if isinstance(value, dict):
        return sum(prefilled(v) for v in value.values())
    if isinstance(value, list):
        return max(1, sum(prefilled(v) for v in value))
    return 1


# The earlier signatures, kept here only to measure them.
def curate_before(config: CurateConfig | None = None) -> None: ...
def pipeline_before(config: PipelineConfig | None = None, until: Until = "export") -> None: ...
def refresh_before(config: PipelineConfig | None = None, settings: RefreshSettings | None = None) -> None: ...


def main() -> None:
    tiny = load_config(PipelineConfig, "tiny").model_dump(mode="json")
    before_params = {
        "pipeline": {"config": tiny, "until": "export"},
        "curate": {"config": {k: v for k, v in tiny.items() if k in CurateConfig.model_fields}},
        "refresh": {"config": tiny},
    }
    after_params = deployment_parameters("tiny")
    flows = {"pipeline": (pipeline_before, pipeline), "curate": (curate_before, curate), "refresh": (refresh_before, refresh)}
    print(f"{'flow':<9} {'':<7} {'fields':>7} {'shown':>6} {'prefilled':>10}  top-level parameters")
    for name, (old, new) in flows.items():
        for label, fn, params in (("before", old, before_params[name]), ("after", new, after_params[name])):
            schema = parameter_schema(fn).model_dump_for_openapi()
            print(f"{name:<9} {label:<7} {leaf_fields(schema):>7} {shown_fields(schema, params):>6} "
                  f"{prefilled(params):>10}  {', '.join(schema['properties'])}")


if __name__ == "__main__":
    main()
