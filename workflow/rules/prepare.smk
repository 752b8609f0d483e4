# Preparation: chunk the input, translate six frames and keep stop-free ones, split into parts.


rule chunk:
    input:
        sample_fasta,
    output:
        "results/{sample}/chunked.fa",
    log:
        "logs/{sample}/chunk.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        size=CHUNK_SIZE,
    shell:
        "virnucflow chunk --size {params.size} {input} {output} > {log} 2>&1"


rule translate:
    input:
        "results/{sample}/chunked.fa",
    output:
        nucleotide="results/{sample}/identified_nucleotide.fa",
        protein="results/{sample}/identified_protein.faa",
    log:
        "logs/{sample}/translate.log",
    conda:
        "../envs/virnucflow.yaml"
    shell:
        "virnucflow translate {input} --nucleotide {output.nucleotide} "
        "--protein {output.protein} > {log} 2>&1"


checkpoint count_parts:
    # How many parts a sample makes: a small file that stays after the run, so that Snakemake can
    # look past it at the per-part rules (and their params) even when the temp() parts are gone.
    input:
        "results/{sample}/identified_protein.faa",
    output:
        "results/{sample}/parts.json",
    log:
        "logs/{sample}/count_parts.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        n=config["records_per_file"],
    shell:
        "virnucflow count-parts --protein {input} --records-per-file {params.n} "
        "--output {output} > {log} 2>&1"


rule split_parts:
    input:
        nucleotide="results/{sample}/identified_nucleotide.fa",
        protein="results/{sample}/identified_protein.faa",
    output:
        keep(directory("results/{sample}/parts")),
    log:
        "logs/{sample}/split.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        n=config["records_per_file"],
    shell:
        "virnucflow split --nucleotide {input.nucleotide} --protein {input.protein} "
        "--records-per-file {params.n} --out-dir {output} > {log} 2>&1"
