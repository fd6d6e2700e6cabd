# ingest: one manifest row per raw image; unreadable input is quarantined with its reason.


rule ingest:
    input:
        **stage_inputs("ingest", "modalities", "data", raw_tree=not DEMO),
        root=ROOT,
    output:
        manifest="data/interim/manifest.csv",
        quarantine="data/interim/quarantine.csv",
    params:
        out=parent_dir("output", "manifest"),
    log:
        "logs/ingest.log",
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow ingest --params params.yaml --out {params.out} > {log} 2>&1"
