# Embedding of each part: DNABERT-S on the frames' DNA, ESM-2 on their proteins.


rule embed_in_process:
    input:
        unpack(lambda wc: model_files()),
        nucleotide="results/{sample}/parts/output_{k}.fa",
        protein="results/{sample}/parts/output_{k}.faa",
    output:
        dnabert=keep("results/{sample}/embeddings/output_{k}_DNABERT_S.npz"),
        esm=keep("results/{sample}/embeddings/output_{k}_ESM.npz"),
    log:
        "logs/{sample}/embed/output_{k}.log",
    benchmark:
        "benchmarks/{sample}/embed/output_{k}.tsv"
    conda:
        "../envs/virnucflow.yaml"
    params:
        esm2=MODELS["esm2"],
        dnabert_s=MODELS["dnabert_s"],
        revision=(
            f"--dnabert-revision {MODELS['dnabert_s_revision']}"
            if MODELS.get("dnabert_s_revision")
            else ""
        ),
        device=config["embedding"]["device"],
    shell:
        "virnucflow embed --nucleotide {input.nucleotide} --protein {input.protein} "
        "--dnabert-out {output.dnabert} --esm-out {output.esm} "
        "--esm2 {params.esm2} --dnabert-s {params.dnabert_s} {params.revision} "
        "--device {params.device} > {log} 2>&1"
