# demo: generate the synthetic DICOM cohort (images, masks, labels.csv) into data/raw/demo
# (data.raw_dir must name it).
# Included only when params.yaml has data.source: demo (see the Snakefile).


rule demo:
    input:
        **stage_inputs("demo", "seed", "modalities", "demo"),
    output:
        raw=directory(DEMO_DIR),
        labels=DEMO_LABELS,
    log:
        "logs/demo.log",
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow demo --params params.yaml --out {output.raw} > {log} 2>&1"
