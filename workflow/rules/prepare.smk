# Preparation, in shards: plan the shards (a gzipped input is decompressed for them), read, chunk and
# translate each shard's byte range in a job of its own, check the sample's ids and put the shards' files
# together in input order, and count the parts. Each part is cut from the shards that hold its frames, so
# the first parts go to the GPU while later shards are still prepared (run_info asks for them early).
# (virnucflow/shards.py gives the sharding rule; the parts never depend on the shards.)


rule shard:
    input:
        sample_fasta,
    output:
        keep(directory("results/{sample}/shards")),
    log:
        "logs/{sample}/shard.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        mb=SHARD_MB,
        n=shards_of,
    shell:
        "virnucflow shard --shard-mb {params.mb} --shards {params.n} {input} {output} > {log} 2>&1"


rule prepare_shard:
    # read + chunk + translate of one shard, streaming; the shards of a sample run in parallel
    input:
        "results/{sample}/shards",
    output:
        chunked=keep("results/{sample}/prepared/shard_{shard}.chunked.fa"),
        # the parts are cut from these (common.smk, part_sources), again when the models change
        nucleotide="results/{sample}/prepared/shard_{shard}.nucleotide.fa",
        protein="results/{sample}/prepared/shard_{shard}.protein.faa",
        ids=keep("results/{sample}/prepared/shard_{shard}.ids"),
        counts=keep("results/{sample}/prepared/shard_{shard}.json"),
    log:
        "logs/{sample}/prepare/shard_{shard}.log",
    # in input order, after the embed jobs that are ready (common.smk, "Priorities")
    priority: lambda wc: shard_priority(wc)
    conda:
        "../envs/virnucflow.yaml"
    params:
        size=CHUNK_SIZE,
    shell:
        "virnucflow prepare-shard --size {params.size} --shard {wildcards.shard} {input} "
        "--chunked {output.chunked} --nucleotide {output.nucleotide} "
        "--protein {output.protein} --ids {output.ids} --counts {output.counts} > {log} 2>&1"


rule concatenate_shards:
    # the whole sample's checks (ids unique, a record not empty), then the sample's files, byte for byte
    # those of one chunk and one translate job over the whole sample
    input:
        unpack(prepared_shards),
    output:
        chunked="results/{sample}/chunked.fa",
        nucleotide="results/{sample}/identified_nucleotide.fa",
        protein="results/{sample}/identified_protein.faa",
    log:
        "logs/{sample}/concatenate_shards.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        size=CHUNK_SIZE,
    shell:
        "virnucflow concatenate-shards --chunked {output.chunked} --chunked-shards {input.chunked} "
        "--nucleotide {output.nucleotide} --nucleotide-shards {input.nucleotide} "
        "--protein {output.protein} --protein-shards {input.protein} "
        "--ids-shards {input.ids} --counts-shards {input.counts} > {log} 2>&1"


checkpoint shard_frames:
    # How many kept frames one shard holds: a small file that stays, from which the workflow knows which
    # shards make which part as soon as they are prepared (common.smk, part_sources).
    input:
        "results/{sample}/prepared/shard_{shard}.json",
    output:
        "results/{sample}/shard_frames/{shard}.json",
    log:
        "logs/{sample}/shard_frames/{shard}.log",
    priority: 1
    localrule: True
    conda:
        "../envs/virnucflow.yaml"
    shell:
        "virnucflow shard-frames --counts {input} --output {output} > {log} 2>&1"


checkpoint count_parts:
    # How many parts a sample makes: a small file that stays after the run, so that Snakemake can
    # look past it at the per-part rules (and their params) even when the temp() parts are gone. It
    # adds up the shards' counts, so the late parts are cut while the sample's files are put together
    # (its ids checked there: classify waits for that check).
    input:
        frames=shard_frame_files,
    output:
        "results/{sample}/parts.json",
    log:
        "logs/{sample}/count_parts.log",
    conda:
        "../envs/virnucflow.yaml"
    params:
        n=config["records_per_file"],
    shell:
        "virnucflow count-parts --frames {input.frames} --records-per-file {params.n} "
        "--output {output} > {log} 2>&1"


rule split_part:
    # one part, byte for byte the original's split file, from the shards that hold it
    input:
        # named one by one, so that a dry run that targets a part before its shards exist can name them
        nucleotide=lambda wc: part_sources(wc)["nucleotide"],
        protein=lambda wc: part_sources(wc)["protein"],
        before=lambda wc: part_sources(wc)["before"],
    output:
        nucleotide=keep("results/{sample}/parts/output_{k}.fa"),
        protein=keep("results/{sample}/parts/output_{k}.faa"),
    log:
        "logs/{sample}/split/output_{k}.log",
    priority: 1
    localrule: True
    conda:
        "../envs/virnucflow.yaml"
    params:
        n=config["records_per_file"],
    shell:
        "virnucflow split-part --part {wildcards.k} --records-per-file {params.n} "
        "--nucleotide-shards {input.nucleotide} --protein-shards {input.protein} "
        "--frames-before {input.before} "
        "--nucleotide {output.nucleotide} --protein {output.protein} > {log} 2>&1"
