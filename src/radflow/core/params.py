"""Load params.yaml and check it against the one JSON schema, failing with the key at fault."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).parent / "schemas" / "params.schema.yaml"


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or breaks the schema."""


def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate(params: dict[str, Any], source: str = "params") -> dict[str, Any]:
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  {key}: {err.message}")
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(lines))
    return params


PROFILE_ENV = "RADFLOW_PROFILE"


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


def load(path: str | Path = "params.yaml", environ: dict[str, str] | None = None) -> dict[str, Any]:
    """params.yaml, with the profile overlay named by $RADFLOW_PROFILE merged on top.

    The Snakefile sets RADFLOW_PROFILE for `snakemake --configfile profiles/<name>.yaml`, so
    the stages see exactly the values Snakemake's config holds.
    """
    params = read_yaml(Path(path))
    profile = (os.environ if environ is None else environ).get(PROFILE_ENV)
    source = str(path)
    if profile:
        params = merge(params, read_yaml(Path(profile)))
        source = f"{path} + {profile}"
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
    """Short stable fingerprint recorded in every artifact."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def classes_for(params: dict[str, Any], modality: str, labels: list[str]) -> list[str]:
    """Class names in model-output order: params.data.classes if given, else sorted labels."""
    declared = params["data"].get("classes", {}).get(modality)
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
