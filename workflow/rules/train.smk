# train: per modality a classifier (timm backbone, transfer learning) and a segmenter (U-Net;
# a model directory saying why it was not trained when there are no masks). GPU when present.
# threads reserve cores and set OMP_NUM_THREADS for the job; torch takes train.num_threads
# from params.yaml (0: all the cores the job reserves; Snakemake caps threads at --cores).


rule train_classifier:
    input:
        **stage_inputs(
            "train_classifier",
            "seed",
            "data.classes",
            "train.classifier",
            "train.augment",
            "train.num_workers",
        ),
        **processed(),
        split="data/split/{modality}.csv",
    output:
        model=directory("models/{modality}/classifier"),
    params:
        data=parent_dir("input", "index"),
    log:
        "logs/train/{modality}_classifier.log",
    threads: TORCH_THREADS
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow train --params params.yaml --modality {wildcards.modality} --task classifier"
        " --data {params.data} --split {input.split} --out {output.model} > {log} 2>&1"


rule train_segmenter:
    input:
        **stage_inputs(
            "train_segmenter", "seed", "train.segmenter", "train.augment", "train.num_workers"
        ),
        **processed(),
        split="data/split/{modality}.csv",
    output:
        model=directory("models/{modality}/segmenter"),
    params:
        data=parent_dir("input", "index"),
    log:
        "logs/train/{modality}_segmenter.log",
    threads: TORCH_THREADS
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow train --params params.yaml --modality {wildcards.modality} --task segmenter"
        " --data {params.data} --split {input.split} --out {output.model} > {log} 2>&1"
