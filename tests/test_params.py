from pathlib import Path

import pytest
import yaml

from radflow.core import params

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


def test_profile_overlay_merges_over_params_by_environment(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("modalities: [ct]\ntrain:\n  classifier:\n    epochs: 3\n")
    merged = params.load(ROOT / "params.yaml", environ={params.PROFILE_ENV: str(profile)})
    plain = params.load(ROOT / "params.yaml", environ={})
    assert merged["modalities"] == ["ct"] and merged["train"]["classifier"]["epochs"] == 3
    # untouched siblings survive the merge
    assert merged["train"]["classifier"]["lr"] == plain["train"]["classifier"]["lr"]


def test_a_profile_breaking_the_schema_is_refused(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("train:\n  classifier:\n    epochs: zero\n")
    with pytest.raises(params.ParamsError, match="train.classifier.epochs"):
        params.load(ROOT / "params.yaml", environ={params.PROFILE_ENV: str(profile)})


def test_shipped_profiles_validate():
    for profile in (ROOT / "profiles").glob("*.yaml"):
        params.load(ROOT / "params.yaml", environ={params.PROFILE_ENV: str(profile)})


def test_dvc_arguments_set_exactly_the_profile_values():
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
