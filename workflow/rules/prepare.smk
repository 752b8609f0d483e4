# Preparation: chunk the input, translate six frames and keep stop-free ones, split into parts.


rule chunk:
    input:
        lambda wc: SAMPLES[wc.sample],
    output:
        "results/{sample}/chunked.fa",
    params:
        size=CHUNK_SIZE,
    log:
        "logs/{sample}/chunk.log",
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
    shell:
        "virnucflow translate {input} --nucleotide {output.nucleotide} "
        "--protein {output.protein} > {log} 2>&1"


checkpoint split_parts:
    input:
        nucleotide="results/{sample}/identified_nucleotide.fa",
        protein="results/{sample}/identified_protein.faa",
    output:
        directory("results/{sample}/parts"),
    params:
        n=config["records_per_file"],
    log:
        "logs/{sample}/split.log",
    shell:
        "virnucflow split --nucleotide {input.nucleotide} --protein {input.protein} "
        "--records-per-file {params.n} --out-dir {output} > {log} 2>&1"
