# Merge the two embeddings of each part, score each part with the original classifier, then put a
# sample's tables together.


rule merge:
    input:
        dnabert="results/{sample}/embeddings/output_{k}_DNABERT_S.npz",
        esm="results/{sample}/embeddings/output_{k}_ESM.npz",
        identity="results/{sample}/embedding_identity.json",
    output:
        "results/{sample}/merged/output_{k}_merged.pt",
    log:
        "logs/{sample}/merge/output_{k}.log",
    conda:
        "../envs/virnucflow.yaml"
    shell:
        "virnucflow merge --dnabert {input.dnabert} --esm {input.esm} --output {output} > {log} 2>&1"


rule classify_part:
    # Scores one part as soon as it and the parts sharing its batches are merged (the original scores
    # in batches of 256 rows that run across parts; virnucflow/predictions.py), and writes its rows.
    input:
        unpack(lambda wc: model_files()),
        merged=classify_window,
    output:
        "results/{sample}/scores/output_{k}.tsv",
    log:
        "logs/{sample}/classify/output_{k}.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        model=CLASSIFIER,
        identity=lambda wc: classifier_identity(),
        first=lambda wc: classify_window_parts(wc)[0],
        n=config["records_per_file"],
    shell:
        "virnucflow classify-part --model {params.model} --part {wildcards.k} "
        "--first-part {params.first} --records-per-file {params.n} --output {output} "
        "{input.merged} > {log} 2>&1"


rule classify:
    # The sample's two tables from its parts' rows, in input order; the per-chunk table is computed
    # over all parts, so a chunk whose frames span a part boundary is judged as in one piece.
    input:
        # the demo's models, made by the workflow, are planned from the start (as before the per-part split)
        unpack(lambda wc: model_files()),
        scores=part_scores,
        # the sample's files, put together once its ids were found unique: no tables for a sample whose
        # ids repeat (its parts are cut and embedded from the shards before that check ends)
        checked="results/{sample}/identified_protein.faa",
    output:
        results="results/{sample}/prediction_results.txt",
        highest="results/{sample}/prediction_results_highestscore.csv",
    log:
        "logs/{sample}/classify.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        out_dir=subpath(output.results, parent=True),
    shell:
        "virnucflow assemble-predictions --out-dir {params.out_dir} {input.scores} > {log} 2>&1"


rule run_info:
    # What produced this sample's results: the models' and the classifier's fingerprints, the
    # numeric mode, the devices, the versions, the chunk size and when the run ended.
    input:
        unpack(sidecar_early_inputs),
        *[early_parts(shard) for shard in range(1, EARLY_SHARDS + 1)],
        provenance=provenance_parts,
        results="results/{sample}/prediction_results.txt",
    output:
        report(
            "results/{sample}/run_info.json",
            caption="../report/run_info.rst",
            category="Provenance",
            labels={"sample": "{sample}", "file": "run_info.json"},
        ),
    log:
        "logs/{sample}/run_info.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        classifier=CLASSIFIER,
        size=CHUNK_SIZE,
    shell:
        "virnucflow run-info --sample {wildcards.sample} --classifier {params.classifier} "
        "--chunk-size {params.size} --output {output} {input.provenance} > {log} 2>&1"


rule contig_calls:
    # One row per input record from the chunk tables (left unchanged), and the records called viral; the
    # table also as a page that the report shows (it offers a TSV only as a download), for people.
    input:
        fasta=lambda wc: SAMPLES[wc.sample],
        results="results/{sample}/prediction_results.txt",
        highest="results/{sample}/prediction_results_highestscore.csv",
    output:
        tsv=report(
            "results/{sample}/virus_contigs.tsv",
            caption="../report/virus_contigs.rst",
            category="Per-record calls",
            labels={"sample": "{sample}", "table": "virus_contigs.tsv"},
        ),
        fasta="results/{sample}/virus_contigs.fa",
        table=report(
            "results/{sample}/virus_contigs.html",
            caption="../report/virus_contigs.rst",
            category="Per-record calls",
            labels={"sample": "{sample}", "table": "virus_contigs, readable"},
        ),
    log:
        "logs/{sample}/contigs.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        size=CHUNK_SIZE,
        fraction=CONTIGS["min_viral_fraction"],
    shell:
        "virnucflow contigs --fasta {input.fasta} --predictions {input.results} "
        "--highest {input.highest} --chunk-size {params.size} "
        "--min-viral-fraction {params.fraction} --tsv {output.tsv} "
        "--fasta-out {output.fasta} --sample {wildcards.sample} "
        "--table-page {output.table} > {log} 2>&1"
