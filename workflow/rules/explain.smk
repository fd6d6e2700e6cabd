# explain: Grad-CAM, Grad-CAM++, saliency, integrated gradients, LIME, SHAP overlays for test
# images, with deletion/insertion (vs random), pointing-game and energy faithfulness scores.


rule explain:
    input:
        **stage_inputs("explain", "seed", "explain"),
        **processed(),
        model="models/{modality}/classifier",
        predictions="reports/evaluation/{modality}/predictions.csv",
    output:
        explanations=report(
            directory("reports/explanations/{modality}"),
            patterns=["{name,[^/]+}.png"],
            caption="../report/explanations.rst",
            category="Explanations",
            labels={"modality": "{modality}", "figure": "{name}"},
        ),
    params:
        data=parent_dir("input", "index"),
    log:
        "logs/explain/{modality}.log",
    threads: TORCH_THREADS
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow explain --params params.yaml --modality {wildcards.modality}"
        " --data {params.data} --model {input.model} --predictions {input.predictions}"
        " --out {output.explanations} > {log} 2>&1"
