# Settings and helpers shared by the stage files (functions only). Each stage has its own
# workflow/rules/<stage>.smk whose rules call `radflow <stage>` exactly as docs/CONTRACTS.md
# and dvc.yaml do.

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from functools import cache
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

MODALITIES = list(config["modalities"])
MODALITY_PATTERN = "|".join(re.escape(m) for m in MODALITIES)
DEMO = config["data"]["source"] == "demo"
ROOT = os.path.normpath(config["data"]["root"])
RAW_DIR = os.path.normpath(config["data"]["raw_dir"])
# The Snakefile's validate() filled the schema's defaults into config, as radflow.core.params
# does for the stages.
LABELS_CSV = config["data"]["labels_csv"]
MASK_DIR = config["data"]["mask_dir"]
# The demo cohort's tree (docs/CONTRACTS.md: `radflow demo ... --out data/raw/demo`) and the
# labels CSV `radflow demo` writes at its root.
DEMO_DIR = "data/raw/demo"
DEMO_LABELS = f"{DEMO_DIR}/labels.csv"
# Cores a torch job (train, evaluate, explain) reserves: train.num_threads, or all of them
# when that is 0, the count the stage pins torch to under any orchestrator
# (radflow.learning.threads.pin: the thread count changes the last bits of float results).
# Snakemake caps `threads` at --cores; the stage still runs that many torch threads.
TORCH_THREADS = config["train"]["num_threads"] or os.cpu_count() or 1


# Dataset params overlays live in params/ (Snakemake's own word "profile" is for execution
# settings, workflow/profiles/); before issue 14 they were profiles/<name>.yaml.
OVERLAY_DIR = "params"
OLD_OVERLAY_DIR = "profiles"
# Set (not read) for the `radflow` commands this run starts; radflow.core.params reads it.
OVERLAY_ENV = "RADFLOW_OVERLAY"
OLD_OVERLAY_ENV = "RADFLOW_PROFILE"


def params_overlay():
    """The overlay given as `--configfile params/<name>.yaml`, or None.

    Every `radflow` command reads params.yaml itself (`--params params.yaml`) plus the overlay
    named by $RADFLOW_OVERLAY, which is set here, so the stages see exactly this config. A
    value given with --config, or any other extra configfile, would change the DAG but not
    what the stages do, so both are refused.
    """
    if os.environ.get(OLD_OVERLAY_ENV):
        raise WorkflowError(
            f"${OLD_OVERLAY_ENV} is no longer read: pass the overlay as --configfile "
            f"{OVERLAY_DIR}/<name>.yaml (the stages get it as ${OVERLAY_ENV}); unset "
            f"{OLD_OVERLAY_ENV}"
        )
    if workflow.config_settings.config:
        raise WorkflowError(
            "radflow reads its parameters from params.yaml (and an overlay) only: edit "
            f"params.yaml or write an overlay under {OVERLAY_DIR}/ instead of passing --config"
        )
    extra = [
        str(p) for p in workflow.overwrite_configfiles or ()
        if os.path.abspath(p) != os.path.abspath("params.yaml")
    ]
    old = [
        p for p in extra
        if os.path.basename(os.path.dirname(os.path.abspath(p))) == OLD_OVERLAY_DIR
    ]
    if old:
        moved = ", ".join(f"{OVERLAY_DIR}/{os.path.basename(p)}" for p in old)
        raise WorkflowError(
            f"the dataset params overlays moved from {OLD_OVERLAY_DIR}/ to {OVERLAY_DIR}/: "
            f"pass --configfile {moved} instead of {', '.join(old)}"
        )
    overlays = os.path.abspath(OVERLAY_DIR)
    if len(extra) > 1 or any(os.path.dirname(os.path.abspath(p)) != overlays for p in extra):
        raise WorkflowError(
            "radflow takes at most one extra configfile, a params overlay under "
            f"{OVERLAY_DIR}/; got {extra}"
        )
    return extra[0] if extra else None


OVERLAY = params_overlay()
if OVERLAY:
    os.environ[OVERLAY_ENV] = os.path.abspath(OVERLAY)
else:
    os.environ.pop(OVERLAY_ENV, None)


def check_params_yaml_is_the_config():
    """Fail unless the demo and folder settings are coherent."""
    for key, path in (("raw_dir", RAW_DIR), ("labels_csv", LABELS_CSV), ("mask_dir", MASK_DIR)):
        if path and os.path.relpath(os.path.normpath(path), ROOT).startswith(".."):
            raise WorkflowError(
                f"data.{key} ({path}) must lie inside data.root ({ROOT}), the folder the "
                "pipeline tracks for changes"
            )
    if DEMO and ROOT != DEMO_DIR:
        raise WorkflowError(f"data.source is demo, so data.root must be {DEMO_DIR}")
    if DEMO and RAW_DIR != DEMO_DIR:
        raise WorkflowError(
            f"data.source is demo, so data.raw_dir must be {DEMO_DIR} (where `radflow demo` "
            f"writes the cohort), not {RAW_DIR}"
        )
    if DEMO and LABELS_CSV and os.path.normpath(LABELS_CSV) != DEMO_LABELS:
        raise WorkflowError(
            f"data.source is demo, so data.labels_csv must be {DEMO_LABELS} (the labels "
            f"`radflow demo` writes), not {LABELS_CSV}"
        )
    if not DEMO and (ROOT == DEMO_DIR or ROOT.startswith(f"{DEMO_DIR}/")):
        raise WorkflowError(
            f"data.source is folder, but {DEMO_DIR} is reserved for the demo cohort "
            "(dvc.yaml's demo stage regenerates it): put your data in another folder"
        )


check_params_yaml_is_the_config()


def params_at(*keys):
    """The params.yaml values a stage reads, by dotted key (dvc.yaml lists the same keys)."""
    values = {}
    for key in keys:
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        values[key] = value
    return values


def parent_dir(io, name):
    """A params function: the folder holding input or output file `name` (for --out DIR etc.)."""
    if io == "input":
        return lambda wildcards, input: os.path.dirname(input[name])
    return lambda wildcards, output: os.path.dirname(output[name])


def _load_core(name):
    """src/radflow/core/<name>.py, loaded by path: it needs only the standard library, so
    the Snakefile runs it without radflow installed (as under --use-conda)."""
    path = os.path.join(workflow.basedir, "src", "radflow", "core", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"radflow_{name}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


CODEGRAPH = _load_core("codegraph")
PROCESSES = _load_core("processes")
# One small file per stage holding the params it reads (and, for a user folder, a
# fingerprint of that folder's files): a stage input whose modification time changes exactly
# when its content does (docs/CACHING.md).
SETTINGS_DIR = ".snakemake/radflow"


@cache
def _tree_fingerprint(root):
    """Names, sizes and modification times of every file under root: an edited, added or
    removed image changes it (Snakemake sees a directory input's own time only)."""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name == ".snakemake_timestamp":
                continue
            path = os.path.join(folder, name)
            st = os.stat(path)
            h.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _write_if_changed(path, text):
    """Rewrite path only when text differs, so its modification time says when it changed."""
    try:
        with open(path) as fh:
            if fh.read() == text:
                return
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def stage_inputs(stage, *keys, raw_tree=False):
    """A stage's inputs besides its data: every file of the code it runs (the import graph of
    its `radflow` command, templates and schema included) and, when it reads params, its
    settings file. Snakemake decides by modification times only (profiles/default), so a
    changed module or a changed params value reruns exactly the stages that use it."""
    inputs = {"code": CODEGRAPH.repo_paths(stage, Path(workflow.basedir))}
    settings = params_at(*keys)
    if raw_tree:
        settings["data.root files"] = _tree_fingerprint(ROOT) if os.path.isdir(ROOT) else None
    if settings:
        path = os.path.join(SETTINGS_DIR, f"{stage}.json")
        _write_if_changed(path, json.dumps(settings, sort_keys=True, indent=1) + "\n")
        inputs["settings"] = path
    return inputs


def processed(modality="{modality}"):
    """The preprocess outputs of one modality (the folder passed as `--data`)."""
    return {
        "images": f"data/processed/{modality}/images.npy",
        "masks": f"data/processed/{modality}/masks.npy",
        "index": f"data/processed/{modality}/index.csv",
    }


def dvc_stage_names(jobs):
    """DVC's name for each Snakemake job with outputs: `rule`, or `rule@modality` for the
    per-modality stages (dvc.yaml declares those with `foreach: ${modalities}`)."""
    names = set()
    for job in jobs:
        if not job.output:
            continue
        modality = job.wildcards_dict.get("modality")
        names.add(f"{job.rule.name}@{modality}" if modality else job.rule.name)
    return sorted(names)


def dvc_commit():
    """Record this run's outputs in dvc.lock, so that `dvc status` agrees with Snakemake.

    Only the stages of this run's DAG are committed: after a successful run their outputs are
    up to date, while outputs outside the DAG (downstream of a partial target) may be stale.
    """
    if not os.path.isdir(".dvc"):
        return
    if OVERLAY:
        logger.warning(
            f"radflow: not committing to DVC: this run used the params overlay {OVERLAY}, "
            "which params.yaml does not hold; for a DVC-tracked run use "
            f"`radflow overlay {OVERLAY} --run` (dvc exp run with the same values)"
        )
        return
    if shutil.which("dvc") is None:
        logger.warning("radflow: .dvc exists but `dvc` is not on PATH; run `dvc commit` yourself")
        return
    stages = dvc_stage_names(workflow.dag.jobs)
    if not stages:
        return
    # Output captured rather than --quiet, which would silence DVC's error message too.
    done = subprocess.run(["dvc", "commit", "--force", *stages], capture_output=True, text=True)
    if done.returncode != 0:
        raise WorkflowError(
            "Snakemake finished, but `dvc commit` failed, so dvc.lock does not "
            f"record them:\n{done.stderr.strip() or done.stdout.strip()}\n"
            f"stages: {' '.join(stages)}"
        )
    logger.info(f"dvc commit: {len(stages)} stages recorded in dvc.lock")


def _snakemake_mtime(path):
    """The time Snakemake compares for path: a directory's .snakemake_timestamp when it has
    one, else its own time; None when missing."""
    stamp = os.path.join(path, ".snakemake_timestamp")
    try:
        return os.stat(stamp if os.path.isdir(path) and os.path.exists(stamp) else path).st_mtime
    except FileNotFoundError:
        return None


def _newest(path, known):
    """The newest time under path (a file's own, or any file's in a directory); `known` holds
    the paths already read or just touched, so a folder several stages read is walked once."""
    if path not in known:
        if os.path.isdir(path):
            known[path] = max(
                [os.stat(path).st_mtime]
                + [os.stat(os.path.join(d, f)).st_mtime for d, _, fs in os.walk(path) for f in fs]
            )
        else:
            known[path] = _snakemake_mtime(path) or 0.0
    return known[path]


def _touch(path, when):
    """Give an output the time `when` the way Snakemake reads it."""
    if os.path.isdir(path):
        path = os.path.join(path, ".snakemake_timestamp")
        open(path, "a").close()
    os.utime(path, (when, when))


def _dvc_clean_stages():
    """dvc.lock's stages that `dvc status` finds up to date, upstream first, each with its
    recorded deps and outs; None when DVC is not set up here or cannot tell."""
    if not (os.path.isdir(".dvc") and os.path.exists("dvc.lock")) or shutil.which("dvc") is None:
        return None
    done = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True)
    try:
        changed = json.loads(done.stdout or "{}") if done.returncode == 0 else None
    except json.JSONDecodeError:
        changed = None
    if changed is None:
        logger.warning(f"radflow: `dvc status` failed, times not aligned:\n{done.stderr.strip()}")
        return None
    with open("dvc.lock") as fh:
        lock = yaml.safe_load(fh) or {}
    stages = {
        name: ([d["path"] for d in stage.get("deps", [])], [o["path"] for o in stage.get("outs", [])])
        for name, stage in lock.get("stages", {}).items()
    }
    return [(name, *stages[name]) for name in _upstream_first(stages) if name not in changed]


def _upstream_first(stages):
    """Stage names ordered so that a stage comes after every stage whose outputs it reads."""

    def within(path, parent):
        return path == parent or path.startswith(os.path.join(parent, ""))

    after = {
        name: {
            other for other, (_, outs) in stages.items()
            if other != name and any(within(d, o) for d in deps for o in outs)
        }
        for name, (deps, _) in stages.items()
    }
    ordered = []
    while after:
        ready = sorted(name for name, needs in after.items() if not needs - set(ordered))
        if not ready:  # a cycle cannot come from DVC, which refuses one; keep going anyway
            ready = sorted(after)
        ordered += ready
        for name in ready:
            del after[name]
    return ordered


def align_with_dvc():
    """Make the outputs of every stage DVC finds up to date look up to date to Snakemake.

    DVC decides by content, Snakemake by modification time. Times stop meaning what they say
    whenever files are written by something else than the stage: `dvc commit` re-links
    outputs from its cache, `dvc pull` and `dvc checkout` restore them in any order, `dvc repro`
    reruns a stage Snakemake did not see. For each stage whose deps, params and outs DVC has
    just checked, upstream first, outputs older than an input (a dependency, or the stage's
    settings file) get a newer time. Only times change, never contents, and never for a stage
    DVC calls changed; skipped under a params overlay, which DVC does not see.
    """
    if OVERLAY or not workflow.is_main_process:  # a job's own Snakemake (cluster) skips it
        return
    stages = _dvc_clean_stages()
    if not stages:
        return
    clock = time.time()
    touched = 0
    known = {}
    for name, deps, outs in stages:
        settings = os.path.join(SETTINGS_DIR, f"{name.partition('@')[0]}.json")
        inputs = [p for p in (*deps, settings) if os.path.exists(p)]
        times = [_snakemake_mtime(p) for p in outs]
        if not inputs or None in times:
            continue
        newest = max(_newest(p, known) for p in inputs)
        if min(times) > newest:
            continue
        clock = max(clock, newest) + 0.001
        for out in outs:
            _touch(out, clock)
            known[out] = clock
        touched += 1
    if touched:
        logger.info(f"radflow: {touched} stages up to date in DVC, their output times aligned")


# ----------------------------------------------------------------- one run at a time in a folder

DVC_LOCK = ".dvc/tmp/lock"
_DVC_LOCK_HELD = []


def clear_stale_locks():
    """A killed Snakemake (kill -9, a lost session, a power cut) leaves its locks, and the
    next run would stop and ask for --unlock. With no other Snakemake in this folder they
    are stale: removed, and said, so the same command resumes. While another run is active,
    they stay and Snakemake stops this one ("Directory cannot be locked")."""
    if not workflow.is_main_process:
        return
    locks = sorted(Path(".snakemake/locks").glob("*.lock"))
    if not locks or PROCESSES.others_running(b"snakemake", os.getcwd()) is not False:
        return
    for lock in locks:
        lock.unlink(missing_ok=True)
    logger.warning(
        "radflow: removed the locks an interrupted Snakemake run left here (no other "
        "Snakemake runs in this folder); its unfinished jobs run again, training from its "
        "last checkpoint"
    )


def hold_dvc_lock():
    """Hold DVC's repository lock while the jobs run: `dvc repro` or `dvc exp run` started
    meanwhile in this folder stops with DVC's "Unable to acquire lock", and a Snakemake run
    started while DVC runs stops here, so two writers never mix their outputs. It is an OS
    file lock (zc.lockfile, as DVC's own): the end of the process releases it, even kill -9."""
    import zc.lockfile

    os.makedirs(os.path.dirname(DVC_LOCK), exist_ok=True)
    try:
        _DVC_LOCK_HELD.append(zc.lockfile.LockFile(DVC_LOCK))
    except zc.lockfile.LockError:
        raise WorkflowError(
            f"DVC is running in this folder ({DVC_LOCK} is held: dvc repro, dvc exp run or "
            "dvc commit): wait until it ends, then run Snakemake again"
        ) from None


def release_dvc_lock():
    while _DVC_LOCK_HELD:
        _DVC_LOCK_HELD.pop().close()
