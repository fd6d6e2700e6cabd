"""The orchestration layer: Snakemake and DVC declare one pipeline.

The stage graph is written twice, once for each tool (Snakefile + workflow/rules/*.smk, and
dvc.yaml). These tests make that a single truth: same stages, same command lines, same
outputs, same dependencies and the same params keys, for the repository's params.yaml and for
a user-folder configuration. Nothing is run: Snakemake is asked for a forced dry run and DVC
for its parsed stages, so neither `radflow` nor any data is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml
from project import env as project_env

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = (
    "Snakefile",
    "workflow",
    "profiles",
    "src",
    "params.yaml",
    "dvc.yaml",
    ".dvcignore",
)
# Snakemake-only inputs: each stage's settings file (DVC reads the same params.yaml keys).
SETTINGS_PREFIX = ".snakemake/radflow/"


# ----------------------------------------------------------------------------- helpers


def _snakemake(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--nocolor", *args],
        cwd=cwd,
        env={**project_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _norm(path: str) -> str:
    return str(PurePosixPath(os.path.normpath(path)))


def _within(path: str, parent: str) -> bool:
    """True when path is parent or lies inside it."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(src, dest / name)
    return dest


def _use_folder_source(project: Path) -> dict:
    """Switch the copy to data.source: folder, with an existing raw folder and labels CSV."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    raw = "data/raw/mine"
    params["data"].update(source="folder", root=raw, raw_dir=raw, labels_csv=f"{raw}/labels.csv")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / raw).mkdir(parents=True)
    (project / raw / "labels.csv").write_text("path,label\n")
    return params


@dataclass
class Stage:
    """One job (Snakemake) or one expanded stage (DVC), in comparable form."""

    cmd: str
    inputs: set[str]
    outputs: set[str]
    params: set[str] = field(default_factory=set)
    threads: int = field(default=1, compare=False)  # Snakemake only; DVC has no such field


# ----------------------------------------------------------------------------- Snakemake side

JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (?P<rule>\w+):$")
JOB_FIELD = re.compile(r"^\s+(?P<key>\w+): (?P<value>.*)$")
SHELL_PREFIX = "Shell command: "


def snakemake_jobs(
    project: Path, *args: str, cores: int = 1
) -> dict[tuple[str, str | None], Stage]:
    """Every job of a forced dry run, keyed by (rule, modality wildcard or None).

    Parsed from `snakemake --forceall --dry-run --printshellcmds` (Snakemake 8/9 layout: a
    `rule NAME:` line, indented `key: value` fields, then `Shell command: ...`; `threads:`
    only where above 1).
    """
    done = _snakemake(
        project, "--forceall", "--dry-run", "--printshellcmds", "--cores", str(cores), *args
    )
    assert done.returncode == 0, done.stdout + done.stderr
    jobs: dict[tuple[str, str | None], Stage] = {}
    current: dict | None = None

    def close(job: dict | None) -> None:
        if job is None or job["rule"] == "all":
            return
        assert "cmd" in job, f"no shell command parsed for rule {job['rule']}:\n{done.stdout}"
        wildcards = dict(w.split("=", 1) for w in _split(job.get("wildcards", "")))
        key = (job["rule"], wildcards.get("modality"))
        assert key not in jobs, f"two jobs for {key}"
        cmd = job["cmd"]
        log = job.get("log", "")
        # Snakemake keeps each job's stdout/stderr in its log file; DVC prints them.
        redirect = f" > {log} 2>&1"
        assert log and cmd.endswith(redirect), f"{key}: command does not write its log: {cmd}"
        inputs = {_norm(p) for p in _split(job.get("input", ""))}
        jobs[key] = Stage(
            cmd=" ".join(cmd[: -len(redirect)].split()),
            inputs={p for p in inputs if not p.startswith(SETTINGS_PREFIX)},
            outputs={_norm(p) for p in _split(job.get("output", ""))},
            threads=int(job.get("threads", 1)),
        )

    for line in done.stdout.splitlines():
        if header := JOB_HEADER.match(line):
            close(current)
            current = {"rule": header["rule"]}
        elif current is None:
            continue
        elif line.startswith(SHELL_PREFIX):
            current["cmd"] = line[len(SHELL_PREFIX) :]
        elif (item := JOB_FIELD.match(line)) and "cmd" not in current:
            current[item["key"]] = item["value"]
    close(current)
    assert jobs, f"no jobs parsed from the dry run:\n{done.stdout}"
    return jobs


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(", ") if v.strip()]


def snakemake_rule_params(project: Path) -> dict[str, set[str]]:
    """The params.yaml keys each rule passes to `stage_inputs(rule, *keys)`."""
    found: dict[str, set[str]] = {}
    for smk in sorted((project / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^(?=(?:rule|checkpoint) \w+:)", smk.read_text(), flags=re.M):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if not name:
                continue
            keys = set()
            for call in re.findall(r"stage_inputs\(\s*\"\w+\"([^)]*)\)", block):
                keys |= set(re.findall(r"\"([^\"]+)\"", call))
            found[name[1]] = keys
    return found


# ----------------------------------------------------------------------------- DVC side


def dvc_stages(project: Path) -> dict[tuple[str, str | None], Stage]:
    """Every stage of dvc.yaml with foreach expanded, keyed by (name, foreach item or None)."""
    from dvc.repo import Repo

    Repo.init(str(project), no_scm=True)
    stages: dict[tuple[str, str | None], Stage] = {}
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            name, _, item = stage.name.partition("@")
            params: set[str] = set()
            inputs: set[str] = set()
            for dep in stage.deps:
                if hasattr(dep, "params"):  # ParamsDependency: keys of params.yaml
                    params |= set(dep.params)
                else:
                    inputs.add(_norm(dep.def_path))
            stages[(name, item or None)] = Stage(
                cmd=" ".join(stage.cmd.split()),
                inputs=inputs,
                outputs={_norm(out.def_path) for out in stage.outs},
                params=params,
            )
    return stages


# ----------------------------------------------------------------------------- comparison


def _own_outputs(outputs: set[str]) -> set[str]:
    """Drop outputs nested in another output of the same stage (demo's labels.csv inside
    its directory: Snakemake names both, DVC forbids overlapping outputs)."""
    return {p for p in outputs if not any(p != q and _within(p, q) for q in outputs)}


def _edges(stages: dict[tuple, Stage]) -> set[tuple[tuple, tuple]]:
    """producer -> consumer, wherever an input lies in (or is) another stage's output."""
    edges = set()
    for consumer, stage in stages.items():
        for path in stage.inputs:
            for producer, other in stages.items():
                if producer != consumer and any(_within(path, out) for out in other.outputs):
                    edges.add((producer, consumer))
    return edges


def _assert_same_pipeline(smk: dict, dvc: dict) -> None:
    assert sorted(smk, key=str) == sorted(dvc, key=str), "different stage sets"
    for key in smk:
        assert smk[key].cmd == dvc[key].cmd, f"{key}: command lines differ"
        assert _own_outputs(smk[key].outputs) == dvc[key].outputs, f"{key}: outputs differ"
        assert smk[key].inputs == dvc[key].inputs, f"{key}: dependencies differ"
    assert _edges(smk) == _edges(dvc)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return _copy_workflow(tmp_path / "project")


def test_snakemake_and_dvc_declare_the_same_pipeline(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    smk, dvc = snakemake_jobs(project), dvc_stages(project)

    _assert_same_pipeline(smk, dvc)

    modalities = params["modalities"]
    per_modality = {rule for rule, m in smk if m is not None}
    assert per_modality == {
        "preprocess", "split", "train_classifier", "train_segmenter",
        "evaluate", "explain", "report",
    }  # fmt: skip
    assert {m for _, m in smk if m is not None} == set(modalities)
    assert {rule for rule, m in smk if m is None} == {"demo", "ingest", "anonymise", "report_index"}
    # the commands are those of docs/CONTRACTS.md
    assert dvc[("demo", None)].cmd == "radflow demo --params params.yaml --out data/raw/demo"
    assert dvc[("train_segmenter", "ct")].cmd == (
        "radflow train --params params.yaml --modality ct --task segmenter "
        "--data data/processed/ct --split data/split/ct.csv --out models/ct/segmenter"
    )
    assert dvc[("report_index", None)].cmd == (
        "radflow report --params params.yaml --index --out reports/index.html"
    )


def test_snakemake_and_dvc_agree_for_a_user_folder(project: Path) -> None:
    params = _use_folder_source(project)
    smk, dvc = snakemake_jobs(project), dvc_stages(project)

    # DVC stages cannot be conditional: its demo stage stays, writing data/raw/demo,
    # which nothing reads; Snakemake leaves the demo rule out.
    assert ("demo", None) not in smk
    assert dvc.pop(("demo", None)).outputs == {"data/raw/demo"}
    _assert_same_pipeline(smk, dvc)
    root = params["data"]["root"]
    data = {p for p in smk[("ingest", None)].inputs if not p.startswith(("src/", "workflow/"))}
    assert data == {root}
    assert root in smk[("anonymise", None)].inputs


def test_rules_and_dvc_stages_read_the_same_params(project: Path) -> None:
    rule_params = snakemake_rule_params(project)
    dvc = dvc_stages(project)
    for (name, _item), stage in dvc.items():
        assert rule_params[name] == stage.params, f"{name}: params keys differ"
    assert set(rule_params) == {name for name, _ in dvc}


def test_dvc_lists_by_hand_what_follows_modalities() -> None:
    """DVC cannot loop outside a stage's foreach: the report index deps (checked against
    Snakemake above) and the training-history metrics and plots (DVCLive's files in each
    model directory, radflow.learning.history) are listed per modality and task."""
    from radflow.learning.history import DIRNAME

    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    modalities = yaml.safe_load((REPO / "params.yaml").read_text())["modalities"]
    tasks = [name.removeprefix("train_") for name in dvc_yaml["stages"] if "train_" in name]
    assert tasks == ["classifier", "segmenter"]
    models = [f"models/{m}/{task}/{DIRNAME}" for m in modalities for task in tasks]
    history_plots = {path: spec for entry in dvc_yaml["plots"] for path, spec in entry.items()}
    assert history_plots == {f"{model}/plots/metrics": {"x": "step"} for model in models}
    assert sorted(dvc_yaml["metrics"]) == sorted(f"{model}/metrics.json" for model in models)
    evaluate = dvc_yaml["stages"]["evaluate"]["do"]
    assert evaluate["metrics"] == ["reports/evaluation/${item}/metrics.json"]
    plot_specs = {path: spec for entry in evaluate["plots"] for path, spec in entry.items()}
    assert plot_specs["reports/evaluation/${item}/roc.csv"] == {"x": "fpr", "y": "tpr"}
    assert plot_specs["reports/evaluation/${item}/confusion.csv"] == {
        "template": "confusion", "x": "actual", "y": "predicted",
    }  # fmt: skip


def test_each_stage_depends_on_all_the_code_it_runs_in_both_orchestrators(
    project: Path,
) -> None:
    """The import graph of each stage's `radflow` command, templates and schema included, is
    the code listed for it in dvc.yaml and given to its Snakemake rule as input."""
    from radflow.core import codegraph

    smk, dvc = snakemake_jobs(project), dvc_stages(project)
    for (name, item), stage in dvc.items():
        code = set(codegraph.repo_paths(name, REPO))
        missing_dvc = sorted(code - stage.inputs)
        assert not missing_dvc, (
            f"dvc.yaml {name} misses {missing_dvc}: python workflow/scripts/sync_code_deps.py"
        )
        stale = sorted(p for p in stage.inputs - code if p.startswith(("src/", "workflow/")))
        assert not stale, f"dvc.yaml {name}: depends on code it does not run: {stale}"
        assert code <= smk[(name, item)].inputs, f"Snakemake {name}: code inputs missing"
    # a stage runs only its own task's module, and the report its templates
    assert "src/radflow/learning/segmentation.py" not in codegraph.repo_paths(
        "train_classifier", REPO
    )
    assert "src/radflow/data/anonymise_pixels.py" in codegraph.repo_paths("anonymise", REPO)
    assert "src/radflow/report/templates" in codegraph.repo_paths("report", REPO)
    assert "workflow/schemas/params.schema.yaml" in codegraph.repo_paths("split", REPO)


def _threads(jobs: dict[tuple[str, str | None], Stage]) -> dict[str, set[int]]:
    """The threads each rule's jobs declare."""
    threads: dict[str, set[int]] = {}
    for (rule, _), job in jobs.items():
        threads.setdefault(rule, set()).add(job.threads)
    return threads


def test_torch_jobs_reserve_the_cores_torch_will_use(project: Path) -> None:
    """Snakemake sets OMP_NUM_THREADS to a job's threads: a torch job that declares none
    runs on one core (the CT overlay's explain stage took 4.9 min instead of 2.9)."""
    (project / "params").mkdir(exist_ok=True)
    (project / "params" / "one.yaml").write_text("modalities: [ct]\n")

    threads = _threads(snakemake_jobs(project, "--configfile", "params/one.yaml", cores=2))

    cores = {min(2, os.cpu_count() or 1)}
    for torch_rule in ("train_classifier", "train_segmenter", "evaluate", "explain"):
        assert threads.get(torch_rule, {1}) == cores, (torch_rule, threads)


def test_every_torch_job_reserves_the_threads_its_stage_pins(project: Path) -> None:
    """The stages pin torch to train.num_threads (0: every core) so that Snakemake and DVC
    write the same bytes; each torch job reserves that many cores, evaluate and explain too
    (they used to share them, and then wrote predictions differing in the 7th digit)."""
    threads = _threads(snakemake_jobs(project, cores=2))

    cores = {min(2, os.cpu_count() or 1)}
    for torch_rule in ("train_classifier", "train_segmenter", "evaluate", "explain"):
        assert threads.get(torch_rule, {1}) == cores, (torch_rule, threads)


def test_snakemake_lint_reports_no_errors(project: Path) -> None:
    done = _snakemake(project, "--lint")

    # `snakemake --lint` exits 1 when it has anything to say, conda/env lints included
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Lints for" not in done.stdout + done.stderr


def test_params_schema_rejects_an_unknown_key(project: Path) -> None:
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["train"]["classifier"]["epoch"] = 3  # a typo of "epochs"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    done = _snakemake(project, "--dry-run", "--cores", "1")

    assert done.returncode != 0
    assert "'epoch' was unexpected" in done.stdout + done.stderr


def test_snakemake_refuses_config_overrides(project: Path) -> None:
    """Every stage reads params.yaml itself, so --config would change the DAG only."""
    done = _snakemake(project, "--dry-run", "--cores", "1", "--config", "seed=7")

    assert done.returncode != 0
    assert "instead of passing --config" in done.stdout + done.stderr


def test_snakemake_takes_an_overlay_but_no_other_configfile(project: Path) -> None:
    """An overlay under params/ reaches the stages through RADFLOW_OVERLAY; others are refused."""
    (project / "params").mkdir(exist_ok=True)
    (project / "params" / "tiny.yaml").write_text("seed: 7\nmodalities: [ct]\n")
    (project / "elsewhere.yaml").write_text("seed: 7\n")

    done = _snakemake(project, "--dry-run", "--cores", "1", "--configfile", "params/tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reports/ct.html" in done.stdout and "reports/mri.html" not in done.stdout

    refused = _snakemake(project, "--dry-run", "--cores", "1", "--configfile", "elsewhere.yaml")
    assert refused.returncode != 0
    assert "a params overlay under params/" in refused.stdout + refused.stderr


def test_snakemake_refuses_the_old_overlay_names_naming_the_new_ones(project: Path) -> None:
    """Overlays moved from profiles/ to params/ and RADFLOW_PROFILE became RADFLOW_OVERLAY."""
    (project / "profiles").mkdir(exist_ok=True)
    (project / "profiles" / "tiny.yaml").write_text("seed: 7\n")
    (project / "params").mkdir(exist_ok=True)
    (project / "params" / "tiny.yaml").write_text("seed: 7\n")

    old_path = _snakemake(
        project, "--dry-run", "--cores", "1", "--configfile", "profiles/tiny.yaml"
    )
    assert old_path.returncode != 0
    assert "pass --configfile params/tiny.yaml" in old_path.stdout + old_path.stderr

    old_env = {"RADFLOW_PROFILE": str(project / "params" / "tiny.yaml")}
    done = _snakemake(project, "--dry-run", "--cores", "1", env=old_env)
    assert done.returncode != 0
    assert "RADFLOW_OVERLAY" in done.stdout + done.stderr


def test_snakemake_refuses_a_folder_source_in_the_demo_tree(project: Path) -> None:
    """dvc.yaml's demo stage regenerates data/raw/demo: never point a user folder there."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["source"] = "folder"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    done = _snakemake(project, "--dry-run", "--cores", "1")

    assert done.returncode != 0
    assert "data/raw/demo is reserved for the demo cohort" in done.stdout + done.stderr


def _conda_env(path: Path) -> tuple[list[str], dict[str, str], list[str]]:
    env = yaml.safe_load(path.read_text())
    conda, pip = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
        else:
            name = re.split(r"[<>=! ]", dep, maxsplit=1)[0]
            conda[name] = dep[len(name) :].strip()
    return env["channels"], conda, pip


def test_conda_environments_agree_with_pyproject() -> None:
    import tomllib

    channels, conda, pip = _conda_env(REPO / "environment.yml")
    rule_channels, rule_conda, rule_pip = _conda_env(REPO / "workflow/envs/radflow.yaml")
    assert (channels, conda) == (rule_channels, rule_conda)
    assert channels[:2] == ["conda-forge", "pytorch"]
    assert conda["python"] == "=3.11"
    assert pip == ["-e ."] and rule_pip == ["-e ../.."]  # the repository root, from each file

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    required = {}
    for dep in pyproject["project"]["dependencies"]:
        name = re.split(r"[<>=!~ \[]", dep, maxsplit=1)[0]
        required[name.lower()] = dep[len(name) :].strip()
    pip_name = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
    for name, spec in conda.items():
        if name in ("python", "pip"):
            continue
        dist = pip_name.get(name, name)
        # each conda package is a pyproject dependency with the same range, so the editable
        # pip install finds it satisfied and leaves it alone
        assert required.get(dist) == spec, f"{name}{spec} vs pyproject {dist}{required.get(dist)}"
