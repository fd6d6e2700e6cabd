# split: patient-grouped, label-stratified train/val/test split.


checkpoint split:
    input:
        **stage_inputs("split", "seed", "split"),
        index="data/processed/{modality}/index.csv",
    output:
        split="data/split/{modality}.csv",
    log:
        "logs/split/{modality}.log",
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow split --params params.yaml --modality {wildcards.modality}"
        " --index {input.index} --out {output.split} > {log} 2>&1"
