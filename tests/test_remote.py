"""Artifacts travel through a DVC remote: one user pushes a finished demo run to an
S3-compatible store (moto's server on loopback), a colleague clones, pulls and predicts with
the pulled model without training.

The run's dvc.lock is written by the run itself (the Snakefile's `dvc commit`), so the user
commits it and pushes it to the shared git repository, as the README says; a clone of the
repository as it was before the run would have no dvc.lock, and nothing to pull. File
contents are compared, never printed: the demo cohort carries planted fake identifiers.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import boto3
import pandas as pd
import pytest
from moto.server import ThreadedMotoServer
from project import REPO, clone, copy_project, run

BUCKET = "radflow-dvc"
REMOTE = "store"
URL = f"s3://{BUCKET}/radflow"
MODEL = "models/xray/classifier"
IMAGES = "data/raw/demo/xray"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """An S3 server on 127.0.0.1 with an empty bucket; dummy credentials in the environment
    (which `project.run` passes on to dvc), the user's own AWS files kept out."""
    empty = tmp_path_factory.mktemp("aws") / "config"
    empty.write_text("")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            # botocore refuses a config file that is not a file (os.devnull included)
            "AWS_CONFIG_FILE": str(empty),
            "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        }.items():
            mp.setenv(name, value)
        for name in ("NO_PROXY", "no_proxy"):
            mp.setenv(name, ",".join(p for p in (os.environ.get(name), "127.0.0.1") if p))
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
        server.stop()


@pytest.fixture(scope="module")
def pushed(demo_clone: Path, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """The user's side: after the demo run, add the remote (its URL committed, the endpoint
    in .dvc/config.local), commit dvc.lock, `git push` to a shared repository, `dvc push`."""
    base = tmp_path_factory.mktemp("remote")
    work = copy_project(demo_clone, base / "user" / "radflow")
    shared = base / "shared.git"
    run(["git", "clone", "-q", "--bare", str(work), str(shared)], base)
    run(["dvc", "remote", "add", "-d", REMOTE, URL], work)
    run(["dvc", "remote", "modify", "--local", REMOTE, "endpointurl", s3_endpoint], work)
    run(["git", "add", "dvc.lock", ".dvc/config"], work)
    run(["git", "commit", "-q", "-m", "demo run: dvc.lock and the team's DVC remote"], work)
    run(["git", "push", "-q", str(shared), "HEAD:main"], work)
    run(["dvc", "push"], work)
    return work, shared


@pytest.fixture(scope="module")
def pulled(pushed, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colleague's side: a fresh clone, the endpoint set locally, `dvc pull`."""
    _, shared = pushed
    work = clone(shared, tmp_path_factory.mktemp("colleague") / "radflow")
    assert not (work / MODEL).exists(), "the clone holds a model before `dvc pull`"
    run(["dvc", "remote", "modify", "--local", REMOTE, "endpointurl", s3_endpoint], work)
    run(["dvc", "pull"], work)
    return work


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder by relative path (Snakemake's marker left out)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".snakemake_timestamp"
    }


def test_push_leaves_the_cache_and_the_bucket_in_sync(pushed, s3_endpoint):
    work, _ = pushed
    status = run(["dvc", "status", "--cloud"], work).stdout
    assert f"Cache and remote '{REMOTE}' are in sync" in status, status
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=BUCKET)
    assert listed.get("KeyCount", 0) > 0


def test_remote_secrets_stay_out_of_git(pushed):
    work, _ = pushed
    assert "remote" not in (REPO / ".dvc/config").read_text(), "the repository ships a remote"
    committed = run(["git", "show", "HEAD:.dvc/config"], work).stdout
    assert URL in committed and "endpointurl" not in committed
    assert "endpointurl" in (work / ".dvc/config.local").read_text()
    assert (
        run(["git", "check-ignore", "-q", ".dvc/config.local"], work, check=False).returncode == 0
    )
    assert run(["git", "status", "--porcelain"], work).stdout == ""


def test_pulled_clone_is_up_to_date_for_dvc(pulled):
    status = run(["dvc", "status"], pulled).stdout
    assert "Data and pipelines are up to date" in status, status


def test_pulled_models_are_byte_identical_to_the_pushed_ones(pushed, pulled):
    work, _ = pushed
    theirs, ours = _digests(work / "models"), _digests(pulled / "models")
    assert f"{MODEL.removeprefix('models/')}/model.pt" in ours
    assert sorted(ours) == sorted(theirs)
    assert [name for name in ours if ours[name] != theirs[name]] == []


def test_pulled_model_predicts_without_training(pulled, tmp_path):
    out = tmp_path / "preds.csv"
    run(["radflow", "predict", "--model", MODEL, "--images", IMAGES, "--out", str(out)], pulled)
    preds = pd.read_csv(out, keep_default_na=False)
    assert len(preds) == len(list((pulled / IMAGES).rglob("*.dcm"))) > 0
    assert {"path", "prob_normal", "prob_opacity", "pred_label"} <= set(preds.columns)
    assert (preds["error"] == "").all()
    assert not (pulled / ".snakemake").exists(), "something ran Snakemake in the pulled clone"


def test_snakemake_has_nothing_to_do_after_pull(pulled, tmp_path):
    work = copy_project(pulled, tmp_path / "radflow")
    dry = run(["snakemake", "-n", "--cores", "1"], work).stdout
    assert "Nothing to be done" in dry, dry[-3000:]
