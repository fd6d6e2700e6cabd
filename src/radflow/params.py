"""Load params.yaml and check it against the one JSON schema, failing with the key at fault."""

from __future__ import annotations

import hashlib
import json
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


def load(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the project root or pass --params")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of parameters")
    return validate(params, str(path))


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
