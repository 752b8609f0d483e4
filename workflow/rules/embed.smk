# Embedding of each part: DNABERT-S on the frames' DNA, ESM-2 on their proteins.
# With `embedding.sidecar: true` (the default) each part is sent to a resident sidecar that holds
# both models (docs/architecture.md says why it is started this way); otherwise each job loads them.


if USE_SIDECAR and not EXTERNAL_ENDPOINT:

    rule sidecar:
        # Starts (or finds) the sidecar of one GPU; it answers READY once its models are loaded.
        # Under SLURM it submits the sidecar as a GPU job of its own, and its output is that job's
        # endpoint file: removed after the last per-file job, which ends the sidecar job.
        input:
            unpack(sidecar_rule_inputs),
        output:
            temp(f"{SIDECAR_DIR}/{{slot}}.started"),
        log:
            "logs/sidecar/{slot}.start.log",
        localrule: True
        conda:
            "../envs/virnucflow.yaml"
        params:
            start=sidecar_start_command,
        shell:
            "{params.start} > {log} 2>&1"


if USE_SIDECAR:

    rule embed_via_sidecar:
        input:
            unpack(sidecar_inputs),
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
            ensure=ensure_args,
            endpoint=lambda wc: endpoint_file(slot_of(wc)),
        shell:
            "sidecar embed --endpoint-file {params.endpoint} {params.ensure} "
            "--nucleotide {input.nucleotide} --protein {input.protein} "
            "--dnabert-out {output.dnabert} --esm-out {output.esm} > {log} 2>&1"

else:

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
            device=EMBED["device"],
            trust=trust_args(),
        shell:
            "virnucflow embed --nucleotide {input.nucleotide} --protein {input.protein} "
            "--dnabert-out {output.dnabert} --esm-out {output.esm} "
            "--esm2 {params.esm2} --dnabert-s {params.dnabert_s} {params.revision} "
            "{params.trust} --device {params.device} > {log} 2>&1"
