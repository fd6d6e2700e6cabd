# demo: generate the synthetic DICOM cohort (images, masks, labels.csv) into data/raw/demo
# (data.raw_dir must name it).
# Included only when params.yaml has data.source: demo (see the Snakefile).


rule demo:
    input:
        **stage_inputs("demo", "seed", "modalities", "demo"),
    output:
        # the whole tree, labels.csv included: the outputs dvc.yaml declares, so that the
        # times align_with_dvc gives after a `dvc pull` are the ones Snakemake compares
        raw=directory(DEMO_DIR),
    log:
        "logs/demo.log",
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow demo --params params.yaml --out {output.raw} > {log} 2>&1"
