# Figures and tables for `snakemake --report report.html`: score tracks per sample, then the
# cross-sample score distribution, viral fractions and run statistics.


rule score_tracks:
    # The sample's score tracks. It calls the records from the input and the chunk tables itself, as
    # contig_calls does, so that it runs beside contig_calls instead of after it (the run's last steps).
    input:
        fasta=lambda wc: SAMPLES[wc.sample],
        results="results/{sample}/prediction_results.txt",
        highest="results/{sample}/prediction_results_highestscore.csv",
    output:
        report(
            "results/{sample}/score_tracks.png",
            caption="../report/score_tracks.rst",
            category="Score tracks",
            labels={"sample": "{sample}", "figure": "score tracks"},
        ),
    log:
        "logs/{sample}/score_tracks.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        results_dir=subpath(input.results, parent=True),
        size=CHUNK_SIZE,
        fraction=CONTIGS["min_viral_fraction"],
        top=REPORT["top_contigs"],
    shell:
        "virnucflow score-tracks --sample {wildcards.sample} --results-dir {params.results_dir} "
        "--fasta {input.fasta} --chunk-size {params.size} --min-viral-fraction {params.fraction} "
        "--top {params.top} --output {output} > {log} 2>&1"


rule report_plots:
    # Reads the embedding jobs' benchmark files too (benchmarks/<sample>/embed/), where they exist.
    # parts.json is read for the number of parts; as an input it also keeps the count_parts jobs in
    # the DAG that `snakemake --report` builds, so that their runtimes are in its statistics.
    input:
        results=expand("results/{sample}/prediction_results.txt", sample=SAMPLES),
        highest=expand(
            "results/{sample}/prediction_results_highestscore.csv", sample=SAMPLES
        ),
        contigs=expand("results/{sample}/virus_contigs.tsv", sample=SAMPLES),
        parts=expand("results/{sample}/parts.json", sample=SAMPLES),
    output:
        scores=report(
            f"{REPORT_DIR}/virus_scores.png",
            caption="../report/virus_scores.rst",
            category="Summary",
            labels={"figure": "distribution of virus scores"},
        ),
        fraction=report(
            f"{REPORT_DIR}/viral_fraction.png",
            caption="../report/viral_fraction.rst",
            category="Summary",
            labels={"figure": "fraction called viral"},
        ),
        stats_plot=report(
            f"{REPORT_DIR}/run_stats.png",
            caption="../report/run_stats.rst",
            category="Run statistics",
            labels={"item": "figure"},
        ),
        stats_table=report(
            f"{REPORT_DIR}/run_stats.tsv",
            caption="../report/run_stats.rst",
            category="Run statistics",
            labels={"item": "table (TSV)"},
        ),
        stats_page=report(
            f"{REPORT_DIR}/run_stats.html",
            caption="../report/run_stats.rst",
            category="Run statistics",
            labels={"item": "table"},
        ),
    log:
        "logs/report_plots.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        samples=report_sample_args(),
    shell:
        "virnucflow report-plots {params.samples} --benchmarks-dir benchmarks "
        "--scores-plot {output.scores} --fraction-plot {output.fraction} "
        "--stats-plot {output.stats_plot} --stats-table {output.stats_table} "
        "--stats-page {output.stats_page} > {log} 2>&1"
