from pathlib import Path

import pytest
import yaml

from radflow import params

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
