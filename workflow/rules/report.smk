# Figures and tables for `snakemake --report report.html`: score tracks per sample, then the
# cross-sample score distribution, viral fractions and run statistics.


rule score_tracks:
    input:
        results="results/{sample}/prediction_results.txt",
        highest="results/{sample}/prediction_results_highestscore.csv",
        contigs="results/{sample}/virus_contigs.tsv",
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
        results_dir=subpath(input.contigs, parent=True),
        size=CHUNK_SIZE,
        top=REPORT["top_contigs"],
    shell:
        "virnucflow score-tracks --sample {wildcards.sample} --results-dir {params.results_dir} "
        "--chunk-size {params.size} --top {params.top} --output {output} > {log} 2>&1"


rule report_plots:
    # Reads the embedding jobs' benchmark files too (benchmarks/<sample>/embed/), where they exist.
    input:
        results=expand("results/{sample}/prediction_results.txt", sample=SAMPLES),
        highest=expand(
            "results/{sample}/prediction_results_highestscore.csv", sample=SAMPLES
        ),
        contigs=expand("results/{sample}/virus_contigs.tsv", sample=SAMPLES),
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
        "--stats-plot {output.stats_plot} --stats-table {output.stats_table} > {log} 2>&1"
