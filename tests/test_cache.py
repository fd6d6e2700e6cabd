"""Reproducible and cached for real: on a git clone, Snakemake, DVC and the code agree.

Every direction a user takes: the demo, then either orchestrator finds nothing to do; a params
change run by one leaves the other nothing to do; an edited image reruns exactly its
modality's branch in both; an edited module reruns exactly the stages that run it.
docs/CACHING.md explains the mechanism.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from project import REPO, copy_project, edit_params, run

from radflow.core import codegraph

NOTHING = "Nothing to be done"
PER_MODALITY = ("split", "train_classifier", "train_segmenter", "evaluate", "explain", "report")


# ----------------------------------------------------------------------------- helpers


def snakemake_jobs_run(output: str) -> set[str]:
    """`rule` or `rule@modality` for each job a Snakemake run or dry run lists."""
    return set(_dry_run_reasons(output)) - {"all"}


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def dvc_stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def dvc_changed(project: Path) -> set[str]:
    return set(json.loads(run(["dvc", "status", "--json"], project).stdout or "{}"))


def assert_in_agreement(project: Path, extra_env: dict[str, str] | None = None) -> None:
    dry = run(["snakemake", "-n", "--cores", "1"], project, extra_env=extra_env)
    assert NOTHING in _output(dry), snakemake_jobs_run(_output(dry))
    status = run(["dvc", "status"], project, extra_env=extra_env).stdout
    assert "up to date" in status, status


def branch(modality: str) -> set[str]:
    return {f"{stage}@{modality}" for stage in PER_MODALITY}


def other_modalities_touched(jobs: set[str], modality: str, stages=PER_MODALITY) -> set[str]:
    """Jobs of `stages` for another modality than `modality`."""
    return {
        job for job in jobs
        if job.split("@")[0] in stages and not job.endswith(f"@{modality}")
    }  # fmt: skip


# Snakemake has no early cutoff of its own: a job it reruns reruns everything planned
# below it, even when it writes the same bytes. preprocess and split are checkpoints, so it
# re-plans after them and spares split, training and evaluation of a modality whose arrays
# did not change (docs/CACHING.md); explain and report are still rerun. DVC stops exactly.
SPARED_BY_SNAKEMAKE = ("split", "train_classifier", "train_segmenter", "evaluate")


@pytest.fixture
def work(demo_clone: Path, tmp_path: Path) -> Path:
    """A copy of the built clone, every modification time kept, for a test that changes it."""
    return copy_project(demo_clone, tmp_path / "radflow")


# ----------------------------------------------------------------------------- the code graph


def test_the_code_graph_covers_what_python_imports_for_each_stage() -> None:
    """Independent of the static reading: importing the modules each `cmd_<command>` imports
    loads no radflow module the graph misses (one process; radflow's modules are dropped
    from sys.modules between stages, so each stage loads its own afresh)."""
    tree = ast.parse((REPO / "src/radflow/cli.py").read_text())
    wanted = {}
    for stage, command in codegraph.STAGE_COMMANDS.items():
        func = next(n for n in tree.body if getattr(n, "name", None) == f"cmd_{command}")
        names = set()
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    names.add(sub if codegraph.module_path(sub) else node.module)
        wanted[stage] = sorted(names - {m for s, m in codegraph.TASK_MODULES.items() if s != stage})
    probe = (
        "import importlib, json, sys\n"
        f"wanted = {wanted!r}\n"
        "loaded = {}\n"
        "for stage, names in wanted.items():\n"
        "    for m in [m for m in sys.modules if m.split('.')[0] == 'radflow']:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module('radflow.cli')\n"
        "    for name in names: importlib.import_module(name)\n"
        "    loaded[stage] = [m for m in sys.modules if m.split('.')[0] == 'radflow']\n"
        "print(json.dumps(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for stage, loaded in json.loads(done.stdout.splitlines()[-1]).items():
        missed = set(loaded) - codegraph.stage_modules(stage)
        assert not missed, f"{stage}: the code graph misses {sorted(missed)}"


def test_every_file_of_the_package_is_a_module_or_data_a_module_claims() -> None:
    package = REPO / "src" / "radflow"
    claimed = {package / rel for rels in codegraph.MODULE_DATA.values() for rel in rels}
    stray = [
        path.relative_to(package)
        for path in package.rglob("*")
        if path.is_file()
        and path.suffix not in {".py", ".pyc"}
        and not any(path == c or c in path.parents for c in claimed)
    ]
    assert not stray, f"read by which module? list them in codegraph.MODULE_DATA: {stray}"


def test_the_code_digest_changes_with_any_byte_of_the_stage_code(tmp_path: Path) -> None:
    package = tmp_path / "radflow"
    for rel in ("", "core", "data"):
        (package / rel).mkdir(exist_ok=True)
        (package / rel / "__init__.py").write_text("")
    (package / "cli.py").write_text(
        "def cmd_split(args, params):\n    from radflow.data import split\n"
    )
    (package / "data" / "split.py").write_text('"""Split."""\n')
    (package / "data" / "demo.py").write_text("")
    (package / "core" / "params.py").write_text("")

    before = codegraph.digest("split", package)
    (package / "data" / "demo.py").write_text("# not split's code\n")
    assert codegraph.digest("split", package) == before
    (package / "data" / "split.py").write_text('"""Split, reworded."""\n')
    assert codegraph.digest("split", package) != before


# ----------------------------------------------------------------------------- agreement


def test_a_fresh_clone_after_the_demo_has_nothing_to_do_in_either(demo_clone: Path) -> None:
    assert_in_agreement(demo_clone)
    assert_in_agreement(demo_clone)  # and checking changed nothing


def test_a_params_change_run_by_dvc_leaves_snakemake_nothing_to_do(work: Path) -> None:
    edit_params(work, {"evaluate": {"bootstrap_samples": 60}})
    ran = dvc_stages_run(run(["dvc", "repro"], work).stdout)

    # explain reads the predictions, which the same model writes to the same bytes under
    # either orchestrator, so it is skipped
    expected = {f"{s}@{m}" for s in ("evaluate", "report") for m in ("mri", "ct", "xray")}
    assert ran == expected | {"report_index"}
    assert_in_agreement(work)


def test_a_params_change_run_by_snakemake_leaves_dvc_clean(work: Path) -> None:
    edit_params(work, {"explain": {"samples": 1}})
    done = run(["snakemake", "--cores", "2"], work)

    expected = {f"{s}@{m}" for s in ("explain", "report") for m in ("mri", "ct", "xray")}
    assert snakemake_jobs_run(_output(done)) == expected | {"report_index"}
    assert_in_agreement(work)


# A key for the copied cohort only (a folder source needs one of its own; never logged).
FOLDER_KEY = {"RADFLOW_PSEUDONYM_KEY": "cache-tests-key-not-a-secret-0123"}


def _edit_one_image(folder: Path, nth: int) -> None:
    """What a user does to their data: correct one X-ray's pixels in place."""
    from radflow.core import imaging

    path = sorted(folder.rglob("*.dcm"))[nth]
    ds = imaging.read_dicom(path)
    pixels = ds.pixel_array.copy()
    pixels[: pixels.shape[0] // 4] //= 2
    ds.PixelData = pixels.tobytes()
    ds.save_as(path)


@pytest.mark.slow  # two more runs of the whole tiny pipeline: about 6 min on 2 cores
def test_an_edited_image_reruns_exactly_its_modality_in_both(work: Path) -> None:
    shutil.copytree(work / "data/raw/demo", work / "data/raw/site")
    site = "data/raw/site"
    edit_params(work, {"data": {
        "source": "folder", "root": site, "raw_dir": site, "labels_csv": f"{site}/labels.csv",
    }})  # fmt: skip
    run(["snakemake", "--cores", "2"], work, extra_env=FOLDER_KEY)
    assert_in_agreement(work, FOLDER_KEY)

    _edit_one_image(work / site / "xray", 0)
    done = run(["snakemake", "--cores", "2"], work, extra_env=FOLDER_KEY)
    jobs = snakemake_jobs_run(_output(done))
    assert {"ingest", "anonymise", "train_classifier@xray", "evaluate@xray"} <= jobs
    assert not other_modalities_touched(jobs, "xray", SPARED_BY_SNAKEMAKE), jobs
    assert_in_agreement(work, FOLDER_KEY)

    _edit_one_image(work / site / "xray", 1)
    ran = dvc_stages_run(run(["dvc", "repro"], work, extra_env=FOLDER_KEY).stdout)
    assert {"ingest", "anonymise", "train_classifier@xray", "evaluate@xray"} <= ran
    assert not other_modalities_touched(ran, "xray"), ran
    assert_in_agreement(work, FOLDER_KEY)


def test_changing_one_module_reruns_exactly_the_stages_that_run_it(work: Path) -> None:
    learning = work / "src/radflow/learning/segmentation.py"
    learning.write_text(learning.read_text() + "\n# a comment is a change too\n")
    stages = {s for s in codegraph.STAGE_COMMANDS if learning in _files(work, s)}
    assert stages == {"train_segmenter", "evaluate"}
    assert dvc_changed(work) == {f"{s}@{m}" for s in stages for m in ("mri", "ct", "xray")}
    dry = _dry_run_reasons(_output(run(["snakemake", "-n"], work)))
    first = {
        job for job, reason in dry.items()
        if "Updated input files: src/radflow/learning/segmentation.py" in reason
    }  # fmt: skip
    # evaluate also waits for the retrained segmenters, the reason Snakemake prints for it
    assert first == {f"train_segmenter@{m}" for m in ("mri", "ct", "xray")}
    learning.write_text(learning.read_text().removesuffix("\n# a comment is a change too\n"))

    split = work / "src/radflow/data/split.py"
    split.write_text(split.read_text() + "\n# a comment is a change too\n")
    assert dvc_changed(work) == {f"split@{m}" for m in ("mri", "ct", "xray")}
    done = run(["snakemake", "--cores", "2"], work)
    # the splits come out byte-identical, so no model is retrained nor re-evaluated
    jobs = snakemake_jobs_run(_output(done))
    assert {f"split@{m}" for m in ("mri", "ct", "xray")} <= jobs
    assert not {j for j in jobs if j.split("@")[0] in SPARED_BY_SNAKEMAKE[1:]}, jobs
    assert_in_agreement(work)
    split.write_text(split.read_text() + "# and another\n")
    ran = dvc_stages_run(run(["dvc", "repro"], work).stdout)
    assert ran == {f"split@{m}" for m in ("mri", "ct", "xray")}
    assert_in_agreement(work)


def _files(project: Path, stage: str) -> set[Path]:
    return set(codegraph.stage_files(stage, project / "src" / "radflow"))


def _dry_run_reasons(output: str) -> dict[str, str]:
    """`rule@modality` -> its `reason:` line, from a dry run (a job's fields in any order)."""
    reasons: dict[str, str] = {}
    for block in re.split(r"^(?=(?:local)?(?:rule|checkpoint) \w+:$)", output, flags=re.M):
        rule = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        reason = re.search(r"^\s+reason: (.*)$", block, flags=re.M)
        if not (rule and reason):
            continue
        modality = re.search(r"^\s+wildcards: modality=(\w+)", block, flags=re.M)
        reasons[f"{rule[1]}@{modality[1]}" if modality else rule[1]] = reason[1]
    return reasons


def test_every_artifact_records_the_code_digest_that_made_it(demo_clone: Path) -> None:
    package = demo_clone / "src" / "radflow"
    meta = json.loads((demo_clone / "models/ct/classifier/meta.json").read_text())
    seg = json.loads((demo_clone / "models/ct/segmenter/meta.json").read_text())
    metrics = json.loads((demo_clone / "reports/evaluation/ct/metrics.json").read_text())
    assert meta["code_digest"] == codegraph.digest("train_classifier", package)
    if seg.get("trained"):
        assert seg["code_digest"] == codegraph.digest("train_segmenter", package)
    assert metrics["code_digest"] == codegraph.digest("evaluate", package)
    page = (demo_clone / "reports/ct.html").read_text()
    assert codegraph.digest("report", package)[:12] in page
    assert meta["code_digest"][:12] in page
    index = (demo_clone / "reports/index.html").read_text()
    assert codegraph.digest("report_index", package)[:12] in index
