# Models: the tiny demo models, made here in the real formats (real models are fetched once, outside jobs).


rule make_demo_models:
    output:
        esm2=f"{DEMO_DIR}/esm2_t2_demo.pt",
        dnabert_s=directory(f"{DEMO_DIR}/dnabert_s_demo"),
        classifier300=f"{DEMO_DIR}/300_model.pth",
        classifier500=f"{DEMO_DIR}/500_model.pth",
    log:
        "logs/make_demo_models.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        out_dir=subpath(output.esm2, parent=True),
    shell:
        "virnucflow make-demo-models --out-dir {params.out_dir} > {log} 2>&1"


# The real models: `snakemake download_models` fetches them once into models.download_dir (checksummed,
# resumable, verified files kept), on a machine with internet; every job afterwards runs offline.
# One rule per model, so that a failed fetch never makes Snakemake delete another model's files.


rule fetch_esm2:
    output:
        update(f"{DOWNLOAD_DIR}/torch/hub/checkpoints/esm2_t36_3B_UR50D.pt"),
    log:
        "logs/fetch_models/esm2.log",
    localrule: True
    conda:
        "../envs/virnucflow.yaml"
    params:
        command=fetch_command("esm2"),
    shell:
        "{params.command} > {log} 2>&1"


rule fetch_dnabert_s:
    output:
        update(directory(f"{DOWNLOAD_DIR}/dnabert_s")),
    log:
        "logs/fetch_models/dnabert_s.log",
    localrule: True
    conda:
        "../envs/virnucflow.yaml"
    params:
        command=fetch_command("dnabert_s"),
    shell:
        "{params.command} > {log} 2>&1"


rule fetch_classifiers:
    output:
        update(f"{DOWNLOAD_DIR}/300_model.pth"),
        update(f"{DOWNLOAD_DIR}/500_model.pth"),
    log:
        "logs/fetch_models/classifiers.log",
    localrule: True
    conda:
        "../envs/virnucflow.yaml"
    params:
        command=fetch_command("classifiers"),
    shell:
        "{params.command} > {log} 2>&1"


rule download_models:
    input:
        rules.fetch_esm2.output,
        rules.fetch_dnabert_s.output,
        rules.fetch_classifiers.output,
    localrule: True
