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
