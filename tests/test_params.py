"""params.yaml: the schema, its defaults (filled once, as Snakemake fills them), overlays."""

import copy
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from radflow import cli
from radflow.core import params
from radflow.data import demo

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_validate():
    loaded = params.load(ROOT / "params.yaml")
    assert loaded["modalities"]


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["train"]["classifier"]["epoch"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(params.ParamsError, match="train.classifier"):
        params.load(path)


def test_wrong_type_names_the_key(tmp_path):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["split"]["test_fraction"] = "a lot"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(params.ParamsError, match="split.test_fraction"):
        params.load(path)


def test_missing_params_file_says_where_to_run(tmp_path):
    with pytest.raises(params.ParamsError, match="not found"):
        params.load(tmp_path / "nope.yaml")


def test_params_hash_changes_with_any_value():
    loaded = params.load(ROOT / "params.yaml")
    changed = yaml.safe_load(yaml.safe_dump(loaded))
    changed["seed"] += 1
    assert params.params_hash(loaded) != params.params_hash(changed)


def test_classes_follow_params_order_and_reject_unknown_labels():
    loaded = params.load(ROOT / "params.yaml")
    assert params.classes_for(loaded, "ct", ["nodule", "no_nodule"]) == ["no_nodule", "nodule"]
    with pytest.raises(params.ParamsError, match="data.classes.ct"):
        params.classes_for(loaded, "ct", ["nodule", "mystery"])


def test_overlay_merges_over_params_by_environment(tmp_path):
    overlay = tmp_path / "p.yaml"
    overlay.write_text("modalities: [ct]\ntrain:\n  classifier:\n    epochs: 3\n")
    merged = params.load(ROOT / "params.yaml", environ={params.OVERLAY_ENV: str(overlay)})
    plain = params.load(ROOT / "params.yaml", environ={})
    assert merged["modalities"] == ["ct"] and merged["train"]["classifier"]["epochs"] == 3
    # untouched siblings survive the merge
    assert merged["train"]["classifier"]["lr"] == plain["train"]["classifier"]["lr"]


def test_an_overlay_breaking_the_schema_is_refused(tmp_path):
    overlay = tmp_path / "p.yaml"
    overlay.write_text("train:\n  classifier:\n    epochs: zero\n")
    with pytest.raises(params.ParamsError, match="train.classifier.epochs"):
        params.load(ROOT / "params.yaml", environ={params.OVERLAY_ENV: str(overlay)})


def test_shipped_overlays_validate():
    overlays = sorted((ROOT / "params").glob("*.yaml"))
    assert len(overlays) >= 4
    for overlay in overlays:
        params.load(ROOT / "params.yaml", environ={params.OVERLAY_ENV: str(overlay)})


def test_no_overlay_is_left_under_the_old_profiles_folder():
    assert not list((ROOT / "profiles").glob("*.y*ml"))


def test_the_old_environment_variable_is_an_error_naming_the_new_one(tmp_path):
    overlay = tmp_path / "p.yaml"
    overlay.write_text("seed: 3\n")
    with pytest.raises(params.ParamsError, match=r"RADFLOW_OVERLAY.*params/<name>\.yaml"):
        params.load(ROOT / "params.yaml", environ={"RADFLOW_PROFILE": str(overlay)})


def test_an_overlay_under_profiles_is_an_error_naming_its_new_place(tmp_path):
    old = tmp_path / "profiles" / "ct-contrast.yaml"
    old.parent.mkdir()
    old.write_text("seed: 3\n")
    with pytest.raises(params.ParamsError, match=r"use params/ct-contrast\.yaml"):
        params.load(ROOT / "params.yaml", environ={params.OVERLAY_ENV: str(old)})


def test_radflow_profile_exits_2_naming_radflow_overlay_and_the_new_path(capsys):
    assert cli.main(["profile", "profiles/ct-contrast.yaml", "--run"]) == 2
    err = capsys.readouterr().err
    assert "radflow overlay params/ct-contrast.yaml" in err


def test_radflow_overlay_prints_the_dvc_command_and_refuses_the_old_path(capsys):
    assert cli.main(["overlay", str(ROOT / "params" / "ct-contrast.yaml"),
                     "--params", str(ROOT / "params.yaml")]) == 0  # fmt: skip
    printed = shlex.split(capsys.readouterr().out)
    assert printed[:4] == ["dvc", "exp", "run", "-S"] and "++modalities=['ct']" in printed
    assert cli.main(["overlay", "profiles/ct-contrast.yaml"]) == 2
    assert "use params/ct-contrast.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------- defaults in the schema


def _subschemas(node, path=()):
    """Every (path, subschema) of the params schema that describes a value."""
    if isinstance(node, dict):
        if "type" in node or "$ref" in node or "default" in node:
            yield path, node
        for key, value in node.items():
            yield from _subschemas(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _subschemas(value, (*path, i))


def _minimal(data):
    """params.yaml with every key the schema can default removed."""
    out = copy.deepcopy(data)
    defaulted = {path for path, sub in _subschemas(params.schema()) if "default" in sub}

    def prune(node, schema_path):
        for key in list(node):
            here = (*schema_path, "properties", key)
            if here in defaulted:
                del node[key]
            elif isinstance(node[key], dict):
                prune(node[key], here)

    prune(out, ())
    return out


def test_defaults_fill_missing_keys_from_the_schema():
    shipped = params.read_yaml(ROOT / "params.yaml")
    minimal = _minimal(shipped)
    assert "demo" not in minimal and "patience" not in minimal["train"]["classifier"]
    filled = params.validate(minimal)
    schema = params.schema()["properties"]
    classifier = schema["train"]["properties"]["classifier"]["properties"]
    assert filled["train"]["classifier"]["patience"] == classifier["patience"]["default"] == 0
    assert filled["data"]["patient_key"] == {
        "source": "dicom", "dicom_attribute": "PatientID", "patterns": [], "bucket": None,
    }  # fmt: skip
    assert filled["data"]["columns"]["slice"] == "slice"
    assert filled["train"]["segmenter"]["inference"]["roi_size"] == 128
    # values that are written stay as written
    assert filled["train"]["classifier"]["epochs"] == shipped["train"]["classifier"]["epochs"]


def test_a_shipped_value_equal_to_its_default_changes_nothing_when_left_out():
    """params.yaml writes most defaults out; leaving them to the schema gives the same params
    (so the same params_hash) for every key but the dataset-specific ones it names."""
    shipped = params.validate(params.read_yaml(ROOT / "params.yaml"))
    filled = params.validate(_minimal(params.read_yaml(ROOT / "params.yaml")))
    for section in ("demo", "anonymise", "train"):
        assert filled[section] == shipped[section], section
    assert params.params_hash(filled) != params.params_hash(shipped)  # data.* differ


def test_params_hash_is_the_same_whether_a_default_is_written_or_left_out():
    shipped = params.read_yaml(ROOT / "params.yaml")
    written = copy.deepcopy(shipped)
    written["train"]["classifier"]["allow_download"] = False
    left_out = copy.deepcopy(shipped)
    del left_out["train"]["classifier"]["allow_download"]
    hashes = {params.params_hash(params.validate(p)) for p in (written, left_out)}
    assert len(hashes) == 1
    written["train"]["classifier"]["allow_download"] = True
    assert params.params_hash(params.validate(written)) not in hashes


def test_defaults_go_only_into_mappings_that_exist_or_default_to_empty():
    filled = params.with_defaults({"train": {"segmenter": {}}, "data": {"label_from": None}})
    assert set(filled) == {"train", "data", "demo"}  # demo defaults to {}; anonymise does not
    assert "classifier" not in filled["train"]  # no default: it stays missing (and required)
    assert filled["train"]["decision"]["threshold"] == "youden"
    assert filled["train"]["segmenter"]["postprocess"]["threshold"] == 0.5
    assert filled["data"]["label_from"] is None  # null keeps its keys' defaults out
    rule = params.with_defaults({"data": {"label_from": {"column": "n"}}})["data"]["label_from"]
    assert rule == {"column": "n", "threshold": 0}


def test_with_defaults_copies_and_leaves_its_argument_alone():
    partial = {"train": {"segmenter": {}}}
    first, second = params.with_defaults(partial), params.with_defaults(partial)
    assert partial == {"train": {"segmenter": {}}}
    first["train"]["segmenter"]["channels"].append(256)
    assert second["train"]["segmenter"]["channels"] == [16, 32, 64, 128]
    assert params.with_defaults(partial)["train"]["segmenter"]["channels"] == [16, 32, 64, 128]


def test_every_default_in_the_schema_is_valid_against_the_schema():
    root = params.schema()
    validator = jsonschema.Draft202012Validator(root)
    defaults = [(path, sub) for path, sub in _subschemas(root) if "default" in sub]
    assert len(defaults) > 60
    for path, sub in defaults:
        errors = list(validator.evolve(schema=sub).iter_errors(sub["default"]))
        assert not errors, f"{'.'.join(map(str, path))}: {errors[0].message}"


def test_no_key_with_a_default_is_required():
    """Snakemake checks `required` before it fills the defaults in `properties`, so a required
    key with a default would be an error there and filled here."""
    for path, sub in _subschemas(params.schema()):
        props = sub.get("properties") or {}
        both = sorted(k for k in sub.get("required", []) if "default" in props.get(k, {}))
        assert not both, f"{'.'.join(map(str, path))}: {both} are required and defaulted"


@pytest.mark.parametrize(
    "label_from", [None, {"column": "n", "above": "a", "otherwise": "b"}], ids=["null", "rule"]
)
def test_snakemake_fills_the_same_defaults_as_radflow(label_from):
    from snakemake.utils import validate as snakemake_validate

    config = _minimal(params.read_yaml(ROOT / "params.yaml"))
    config["data"]["label_from"] = label_from
    config["anonymise"]["blackout"] = [{"regions": [[0, 0, 4, 4]]}]
    ours = params.validate(config)
    snakemake_validate(config, str(params.SCHEMA_PATH), set_default=True)  # fills in place
    assert config == ours


def test_demo_defaults_come_from_the_schema():
    shipped = params.read_yaml(ROOT / "params.yaml")
    without = {k: v for k, v in shipped.items() if k != "demo"}
    demo_defaults = params.validate(without)["demo"]
    assert demo_defaults == shipped["demo"]  # 40 patients per modality, as params.yaml says
    assert demo.check_params(demo_defaults) == demo_defaults
    assert not hasattr(demo, "DEFAULTS")
    with pytest.raises(ValueError, match="with_defaults"):
        demo.check_params({"patients_per_modality": 2})


def test_dvc_arguments_set_exactly_the_overlay_values():
    overlay = {
        "modalities": ["xray"],
        "data": {"label_map": {"0": "no", "1": "yes"}, "patient_key": {"patterns": [r"^(\d+)_x$"]}},
        "seed": 3,
    }
    args = params.dvc_set_args(overlay)
    assert args[::2] == ["-S"] * (len(args) // 2)
    values = args[1::2]
    assert "++modalities=['xray']" in values
    assert "++data.label_map={0:'no',1:'yes'}" in values
    assert r"++data.patient_key.patterns=['^(\d+)_x$']" in values
    assert "++seed=3" in values
