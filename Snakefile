# radflow: DICOM / NIfTI / PNG in, de-identified data, fine-tuned models, honest metrics and an
# explained HTML report out. Every stage is one `radflow <stage>` command (docs/CONTRACTS.md);
# dvc.yaml declares the same stages with the same command lines (tests/test_workflow.py checks).
#
#   snakemake --cores all                 # run what is out of date (no conda needed)
#   snakemake --cores all --use-conda     # the same, in workflow/envs/radflow.yaml
#   snakemake --report report.zip         # Snakemake's report of the run
#
# Snakemake and DVC agree in both directions with nothing to touch by hand: Snakemake decides
# by times (profiles/default), each rule's inputs hold its code and its params file, and at
# start-up align_with_dvc() gives the outputs of stages DVC finds up to date their proper
# times; onsuccess commits the run to DVC (docs/CACHING.md).
# Each rule runs its DVC stage's command with `> {log} 2>&1` appended (logs/ folder).
# params.yaml is the only source of parameters: every command reads it itself, so the
# Snakemake config may not be changed with --config or another --configfile than a dataset
# params overlay, `--configfile params/<name>.yaml` (common.smk).

from snakemake.utils import min_version, validate

min_version("8.20")


configfile: "params.yaml"


# Fills the schema's defaults into config (as radflow.core.params does for the stages).
validate(config, "workflow/schemas/params.schema.yaml", set_default=True)


include: "workflow/rules/common.smk"


wildcard_constraints:
    modality=MODALITY_PATTERN,


rule all:
    default_target: True
    input:
        "reports/index.html",
        expand("reports/{modality}.html", modality=MODALITIES),


# data.source "demo" generates the synthetic cohort into data.raw_dir (data/raw/demo);
# "folder" reads the user's folder as it is, and ingest depends on that folder directly.
# Snakemake sees a directory input's own modification time only, so editing files deep inside
# data.raw_dir does not re-run ingest: use `--forcerun ingest` then (DVC hashes the folder).
if DEMO:

    include: "workflow/rules/demo.smk"


include: "workflow/rules/ingest.smk"
include: "workflow/rules/anonymise.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/report.smk"


# After every rule's inputs (settings files included) are written: see align_with_dvc.
align_with_dvc()
# Locks a killed run left behind; then, once jobs are to run, DVC's lock (common.smk).
clear_stale_locks()


onstart:
    hold_dvc_lock()


onerror:
    release_dvc_lock()


onsuccess:
    release_dvc_lock()
    dvc_commit()
    print(f"radflow report: {os.path.abspath('reports/index.html')}")
