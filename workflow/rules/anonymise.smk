# anonymise: DICOM PS3.15 Annex E de-identification of every manifest row, with an audit log.
# It reads the original files the manifest points at, hence the raw folder as an input.


rule anonymise:
    input:
        **stage_inputs("anonymise", "anonymise", "data.source", raw_tree=not DEMO),
        manifest="data/interim/manifest.csv",
        root=ROOT,
    output:
        files=directory("data/anonymised/files"),
        manifest="data/anonymised/manifest.csv",
        audit="data/anonymised/audit.csv",
        quarantine="data/anonymised/quarantine.csv",
    params:
        out=parent_dir("output", "manifest"),
    log:
        "logs/anonymise.log",
    conda:
        "../envs/radflow.yaml"
    shell:
        "radflow anonymise --params params.yaml --manifest {input.manifest} --out {params.out}"
        " > {log} 2>&1"
