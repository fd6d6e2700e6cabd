# ingest: one manifest row per raw image; unreadable input is quarantined with its reason.


rule ingest:
    input:
        unpack(ingest_inputs),
    output:
        manifest="data/interim/manifest.csv",
        quarantine="data/interim/quarantine.csv",
    params:
        out=parent_dir("output", "manifest"),
        settings=params_at("modalities", "data"),
    log:
        "logs/ingest.log",
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow ingest --params params.yaml --out {params.out} > {log} 2>&1"
