# report: one self-contained HTML page per modality, and an index page linking them.


rule report:
    input:
        **stage_inputs("report"),
        metrics="reports/evaluation/{modality}/metrics.json",
        predictions="reports/evaluation/{modality}/predictions.csv",
        roc="reports/evaluation/{modality}/roc.csv",
        pr="reports/evaluation/{modality}/pr.csv",
        confusion="reports/evaluation/{modality}/confusion.csv",
        segmentation="reports/evaluation/{modality}/segmentation.csv",
        overlays="reports/evaluation/{modality}/overlays",
        explanations="reports/explanations/{modality}",
        classifier="models/{modality}/classifier",
        segmenter="models/{modality}/segmenter",
    output:
        page=report(
            "reports/{modality}.html",
            caption="../report/modality.rst",
            category="Reports",
            labels={"modality": "{modality}", "page": "modality report"},
        ),
    params:
        evaluation=parent_dir("input", "metrics"),
        models=parent_dir("input", "classifier"),
    log:
        "logs/report/{modality}.log",
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow report --params params.yaml --modality {wildcards.modality}"
        " --evaluation {params.evaluation} --explanations {input.explanations}"
        " --models {params.models} --out {output.page} > {log} 2>&1"


rule report_index:
    input:
        **stage_inputs("report_index", "modalities"),
        pages=expand("reports/{modality}.html", modality=MODALITIES),
    output:
        page=report(
            "reports/index.html",
            caption="../report/index.rst",
            category="Reports",
            labels={"modality": "all", "page": "index"},
        ),
    log:
        "logs/report/index.log",
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow report --params params.yaml --index --out {output.page} > {log} 2>&1"
