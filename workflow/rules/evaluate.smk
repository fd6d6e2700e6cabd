# evaluate: test-set metrics with bootstrap confidence intervals, operating point, calibration,
# subgroups; ROC, precision-recall and confusion tables; segmentation metrics per slice and
# per patient with overlays of the best, median and worst lesion cases.


rule evaluate:
    input:
        **stage_inputs("evaluate", "seed", "data.classes", "evaluate"),
        **processed(),
        split="data/split/{modality}.csv",
        classifier="models/{modality}/classifier",
        segmenter="models/{modality}/segmenter",
    output:
        metrics="reports/evaluation/{modality}/metrics.json",
        predictions="reports/evaluation/{modality}/predictions.csv",
        roc="reports/evaluation/{modality}/roc.csv",
        pr="reports/evaluation/{modality}/pr.csv",
        confusion="reports/evaluation/{modality}/confusion.csv",
        segmentation="reports/evaluation/{modality}/segmentation.csv",
        overlays=directory("reports/evaluation/{modality}/overlays"),
    params:
        data=parent_dir("input", "index"),
        models=parent_dir("input", "classifier"),
        out=parent_dir("output", "metrics"),
    log:
        "logs/evaluate/{modality}.log",
    threads: TORCH_THREADS
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow evaluate --params params.yaml --modality {wildcards.modality}"
        " --data {params.data} --split {input.split} --models {params.models}"
        " --out {params.out} > {log} 2>&1"
