# Embedding of each part: DNABERT-S on the frames' DNA, ESM-2 on their proteins.
# With `embedding.sidecar: true` (the default) each part is sent to a resident sidecar that holds
# both models (docs/architecture.md says why it is started this way); otherwise each job loads them.


rule embedding_settings:
    # Every embedding setting of the run (models, mode, device, budgets, timeouts) as one file; its
    # params make it follow the config, and its readers take it as ancient() (see common.smk).
    output:
        SETTINGS_FILE,
    log:
        "logs/embedding_settings.log",
    localrule: True
    conda:
        "../envs/virnucflow.yaml"
    params:
        settings=SETTINGS.to_json(),
    # a virnucflow step, not run: (those jobs got a start after their end) nor printf (a job quicker than the
    # file system clock's tick ends when it starts): the report's log-scale runtime plot needs a time > 0
    shell:
        "virnucflow write-json --output {output} {params.settings:q} > {log} 2>&1"


rule embedding_identity:
    # The models' fingerprints and the numeric mode that embed this sample; every embed and merge job
    # reads this file, so a new checkpoint, revision or mode re-embeds (common.smk says why a file).
    output:
        "results/{sample}/embedding_identity.json",
    log:
        "logs/{sample}/embedding_identity.log",
    localrule: True
    conda:
        "../envs/virnucflow.yaml"
    params:
        identity=lambda wc: embedding_identity(),
    shell:
        "virnucflow write-json --output {output} {params.identity:q} > {log} 2>&1"


if USE_SIDECAR and not EXTERNAL_ENDPOINT:

    rule sidecar:
        # Starts (or finds) the sidecar of one GPU for one sample; it answers READY once its models are
        # loaded. It runs at the start of a run that will embed the sample (common.smk,
        # sidecar_early_inputs), so that the models load during the preparation. Under SLURM it submits
        # the sidecar as a GPU job of its own, or finds the one running, and its output is the sample's
        # lease on it: removed after the sample's last embed job; the job ends when none is left.
        input:
            unpack(sidecar_rule_inputs),
        output:
            temp(f"{SIDECAR_DIR}/{{slot}}/{{sample}}.started"),
        log:
            "logs/sidecar/{slot}/{sample}.start.log",
        priority: 10  # first of the jobs that are ready: its models load while the others run
        localrule: True
        conda:
            "../envs/virnucflow.yaml"
        params:
            start=sidecar_start_command,
        shell:
            "({params.start}) > {log} 2>&1"


rule embed:
    # One command, two transports: a thin client of the run's sidecars, which sends the part to the
    # one that will finish it first, or (embedding.sidecar: false) a job that loads both models itself,
    # as the original does. Either way the part's provenance record says which models, mode and device
    # made its vectors.
    input:
        unpack(sidecar_inputs),
        # the demo's models, made by the workflow: a client checks its sidecar against their fingerprints
        unpack(lambda wc: model_files()),
        settings=ancient(SETTINGS_FILE),
        identity="results/{sample}/embedding_identity.json",
        nucleotide="results/{sample}/parts/output_{k}.fa",
        protein="results/{sample}/parts/output_{k}.faa",
    output:
        dnabert=keep("results/{sample}/embeddings/output_{k}_DNABERT_S.npz"),
        esm=keep("results/{sample}/embeddings/output_{k}_ESM.npz"),
        provenance="results/{sample}/provenance/output_{k}.json",
    log:
        "logs/{sample}/embed/output_{k}.log",
    benchmark:
        "benchmarks/{sample}/embed/output_{k}.tsv"
    priority: lambda wc: embed_priority(wc)
    conda:
        "../envs/virnucflow.yaml"
    resources:
        gpu=0 if USE_SIDECAR else 1,
        mem_mb=2000 if USE_SIDECAR else 32000,
    params:
        args=embed_args,
    shell:
        "virnucflow embed {params.args} --settings-file {input.settings} "
        "--nucleotide {input.nucleotide} --protein {input.protein} "
        "--dnabert-out {output.dnabert} --esm-out {output.esm} "
        "--provenance-out {output.provenance} > {log} 2>&1"
