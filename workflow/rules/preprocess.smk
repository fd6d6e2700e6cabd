# preprocess: per-modality intensity normalisation and resizing, cached as arrays.


checkpoint preprocess:
    input:
        **stage_inputs("preprocess", "preprocess"),
        manifest="data/anonymised/manifest.csv",
        files="data/anonymised/files",
    output:
        **processed(),
        quarantine="data/processed/{modality}/quarantine.csv",
    params:
        out=parent_dir("output", "index"),
    log:
        "logs/preprocess/{modality}.log",
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow preprocess --params params.yaml --modality {wildcards.modality}"
        " --manifest {input.manifest} --out {params.out} > {log} 2>&1"
