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


checkpoint split_parts:
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
