"""Load params.yaml, fill the schema's defaults and check it, failing with the key at fault.

Every default lives in the JSON schema (`default:`), so the code reads params["x"]["y"] and
never carries a second copy of a default. Snakemake's validate(set_default=True) fills the
same defaults into its config, so the rules and the stages see the same values.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import validators

SCHEMA_PATH = Path(__file__).parent / "schemas" / "params.schema.yaml"

# The folder of the dataset params overlays, and the names they had before issue 14, which
# now fail with a message naming the new ones ("profile" is Snakemake's execution profile).
OVERLAY_DIR = "params"
OVERLAY_ENV = "RADFLOW_OVERLAY"
OLD_OVERLAY_DIR = "profiles"
OLD_OVERLAY_ENV = "RADFLOW_PROFILE"


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or breaks the schema."""


def schema() -> dict[str, Any]:
    """The params schema, a fresh copy each call (callers may change it)."""
    return copy.deepcopy(_schema())


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


_PROPERTIES = jsonschema.Draft202012Validator.VALIDATORS["properties"]


def _set_defaults(
    validator: Any, properties: dict[str, Any], instance: Any, subschema: Any
) -> Iterator[jsonschema.ValidationError]:
    """jsonschema's documented recipe: set each missing property's default, then validate.

    The same as Snakemake's, except that it leaves non-mappings alone (they are errors that
    the validation proper reports) and copies each default, so no two params share one list.
    """
    if isinstance(instance, dict):
        for name, prop in properties.items():
            if isinstance(prop, dict) and "default" in prop and name not in instance:
                instance[name] = copy.deepcopy(prop["default"])
    yield from _PROPERTIES(validator, properties, instance, subschema)


_Filler = validators.extend(jsonschema.Draft202012Validator, {"properties": _set_defaults})


def with_defaults(partial: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `partial` with the schema's defaults filled in, not validated.

    Defaults go into mappings that exist or that are themselves defaulted to {}: for code and
    tests that build params by hand, e.g. with_defaults({"demo": {"image_size": 48}})["demo"].
    """
    filled = copy.deepcopy(dict(partial))
    for _ in _Filler(_schema()).iter_errors(filled):  # filling happens while validating
        pass
    return filled


def schema_errors(params: Mapping[str, Any]) -> Iterator[jsonschema.ValidationError]:
    """Where params break the schema (defaults are not filled first)."""
    validator = jsonschema.Draft202012Validator(_schema())
    yield from sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))


def validate(params: Mapping[str, Any], source: str = "params") -> dict[str, Any]:
    """params with the schema's defaults filled in, or ParamsError listing every bad key."""
    filled = with_defaults(params)
    lines = []
    for err in schema_errors(filled):
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        lines.append(f"  {key}: {err.message}")
    if lines:
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(lines))
    return filled


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the project root or pass --params")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of parameters")
    return data


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Overlay wins; mappings merge key by key, everything else (lists too) is replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def check_overlay_path(path: str | Path) -> None:
    """Refuse an overlay under profiles/, where the overlays lived before, naming the new path."""
    where = Path(path)
    if where.parent.name == OLD_OVERLAY_DIR:
        raise ParamsError(
            f"the dataset params overlays moved from {OLD_OVERLAY_DIR}/ to {OVERLAY_DIR}/: "
            f"use {OVERLAY_DIR}/{where.name} instead of {path}"
        )


def load(
    path: str | Path = "params.yaml", environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """params.yaml, with the overlay named by $RADFLOW_OVERLAY merged on top, defaults filled.

    The Snakefile sets RADFLOW_OVERLAY for `snakemake --configfile params/<name>.yaml`, so
    the stages see exactly the values Snakemake's config holds.
    """
    env = os.environ if environ is None else environ
    if env.get(OLD_OVERLAY_ENV):
        raise ParamsError(
            f"${OLD_OVERLAY_ENV} is no longer read: the dataset overlays are "
            f"{OVERLAY_DIR}/<name>.yaml and the variable is ${OVERLAY_ENV} (set by the Snakefile "
            f"for `snakemake --configfile {OVERLAY_DIR}/<name>.yaml`); unset {OLD_OVERLAY_ENV}"
        )
    params = read_yaml(Path(path))
    overlay = env.get(OVERLAY_ENV)
    source = str(path)
    if overlay:
        check_overlay_path(overlay)
        params = merge(params, read_yaml(Path(overlay)))
        source = f"{path} + {overlay}"
    return validate(params, source)


def dvc_set_args(overlay: dict[str, Any], prefix: str = "") -> list[str]:
    """`dvc exp run` arguments (-S ++key=value, Hydra syntax) that apply an overlay."""
    args: list[str] = []
    for key, value in overlay.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(_is_identifier(k) for k in value):
            args += dvc_set_args(value, f"{name}.")
        else:
            args += ["-S", f"++{name}={_hydra(value)}"]
    return args


def _is_identifier(key: Any) -> bool:
    return isinstance(key, str) and key.isidentifier()


def _hydra(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("'", "\\'") + "'"


def params_hash(params: dict[str, Any]) -> str:
    """Short stable fingerprint recorded in every artifact.

    Hash validated params (defaults filled), so that writing a default out or leaving it to
    the schema gives the same hash, and changing a schema default changes it.
    """
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def classes_for(params: dict[str, Any], modality: str, labels: list[str]) -> list[str]:
    """Class names in model-output order: params.data.classes if given, else sorted labels."""
    declared = params["data"]["classes"].get(modality)  # a modality may be left out
    present = sorted({lab for lab in labels if lab})
    if declared is None:
        return present
    unknown = sorted(set(present) - set(declared))
    if unknown:
        raise ParamsError(
            f"labels {unknown} for modality {modality} are not in data.classes.{modality} "
            f"{declared}; add them to params.yaml or fix the labels CSV"
        )
    return list(declared)
