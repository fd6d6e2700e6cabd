# Settings and helpers shared by the stage files (functions only). Each stage has its own
# workflow/rules/<stage>.smk whose rules call `radflow <stage>` exactly as docs/CONTRACTS.md
# and dvc.yaml do.

import os
import re
import shutil
import subprocess

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
# when that is 0 (torch's default). Snakemake caps it at --cores and sets OMP_NUM_THREADS to
# it, so a job that declares no threads runs torch on one core.
TORCH_THREADS = config["train"]["num_threads"] or os.cpu_count() or 1
# Evaluate and explain run once per modality on small batches: the modalities share those
# cores and run side by side, and a one-modality overlay gives them all of its cores (its
# explain stage ran 1.7 times faster on 2 cores than on 1).
SHARED_TORCH_THREADS = max(1, TORCH_THREADS // len(MODALITIES))


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
    """The params.yaml values a stage reads, by dotted key.

    Rules pass them as `params:` and dvc.yaml lists the same keys, so that changing one re-runs
    the stage in Snakemake (rerun trigger "params") as in DVC.
    """
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


def ingest_inputs(wildcards):
    """The dataset folder (data.root), which holds the images and the labels CSV.

    A directory input: Snakemake sees the folder's own modification time, which does not
    change when a file deep inside it is edited (a known Snakemake limitation for directory
    inputs). After changing raw data in place, run `snakemake --cores all --forcerun ingest`;
    DVC hashes the folder and notices by itself.
    """
    return {"root": ROOT}


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
