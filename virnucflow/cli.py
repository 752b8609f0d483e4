"""The `virnucflow` command: one subcommand per pipeline step; heavy imports happen inside each step."""

import argparse
import logging
import sys
from pathlib import Path

from virnucflow import __version__
from virnucflow.errors import InputError


def cmd_chunk(args):
    from virnucflow.atomic import atomic_path
    from virnucflow.chunking import chunk_records
    from virnucflow.fasta import read_fasta, write_fasta
    from virnucflow.progress import counted

    with atomic_path(args.output) as tmp, open(tmp, "w") as fh:
        n = 0
        records = read_fasta(args.input, nucleotide=True)
        for record in counted(chunk_records(records, args.size), "chunk", "chunks written"):
            write_fasta(fh, [record], width=60)
            n += 1
        if n == 0:
            raise InputError(f"{args.input}: every record is empty; nothing to classify")
    logging.info("wrote %d chunks of up to %d bp to %s", n, args.size, args.output)


def cmd_translate(args):
    from virnucflow.atomic import atomic_path
    from virnucflow.fasta import read_fasta, write_fasta
    from virnucflow.progress import counted
    from virnucflow.translation import kept_frames

    with atomic_path(args.nucleotide) as nuc_tmp, atomic_path(args.protein) as prot_tmp:
        with open(nuc_tmp, "w") as nuc, open(prot_tmp, "w") as prot:
            chunks = kept = 0
            for chunk_id, seq in counted(read_fasta(args.input, nucleotide=True), "translate", "chunks read"):
                chunks += 1
                for frame_id, nucleotide, protein in kept_frames(chunk_id, seq):
                    write_fasta(nuc, [(frame_id, nucleotide)])
                    write_fasta(prot, [(frame_id, protein)])
                    kept += 1
    logging.info("%d chunks, %d frames without a stop codon", chunks, kept)


def cmd_shard(args):
    from virnucflow.shards import plan_shards, shard_bytes

    n = plan_shards(args.input, args.out_dir, shard_bytes(args.shard_mb), args.shards)
    logging.info("planned %d shard(s) of %s in %s", n, args.input, args.out_dir)


def cmd_prepare_shard(args):
    from virnucflow.shards import prepare_shard

    counts = prepare_shard(args.plan, args.shard, args.size, args.chunked, args.nucleotide, args.protein,
                           args.ids, args.counts)
    logging.info("shard %d of %s: %d records, %d chunks of up to %d bp, %d frames without a stop codon",
                 args.shard, counts["fasta"], counts["records"], counts["chunks"], args.size, counts["kept_frames"])


def cmd_concatenate(args):
    from virnucflow.shards import check_and_concatenate

    check_and_concatenate(args.counts_shards, args.ids_shards, [
        (args.chunked_shards, args.chunked), (args.nucleotide_shards, args.nucleotide),
        (args.protein_shards, args.protein)])
    logging.info("checked the ids and put %d shard(s) together", len(args.chunked_shards))


def cmd_split(args):
    from virnucflow.split import split_parts

    n = split_parts(args.nucleotide, args.protein, args.out_dir, args.records_per_file)
    logging.info("wrote %d part(s) to %s", n, args.out_dir)


def _kept_frames(paths):
    """The kept frames of the shards whose `shard-frames` (or counts) files these are, added up; a file that
    cannot say is a one-line InputError."""
    import json

    total = 0
    for path in paths:
        try:
            total += int(json.loads(Path(path).read_text())["kept_frames"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: no kept-frame count in it ({exc.__class__.__name__}); rerun the workflow "
                             "to prepare the sample's shards again") from None
    return total


def cmd_split_part(args):
    from virnucflow.split import split_part

    before = _kept_frames(args.frames_before)
    skip = (args.part - 1) * args.records_per_file - before
    n = split_part(args.nucleotide_shards, args.protein_shards, skip, args.nucleotide, args.protein,
                   args.records_per_file)
    logging.info("wrote %d frame(s) to %s and %s", n, args.nucleotide, args.protein)


def cmd_shard_frames(args):
    from virnucflow.provenance import write_json

    frames = _kept_frames([args.counts])
    write_json(args.output, {"kept_frames": frames})
    logging.info("%s: %d kept frame(s)", args.counts, frames)


def cmd_count_parts(args):
    from virnucflow.provenance import write_json
    from virnucflow.split import count_parts

    if args.frames:
        from virnucflow.split import part_count

        n = part_count(_kept_frames(args.frames), args.records_per_file)
        source = f"{len(args.frames)} shard(s)"
    else:
        n, source = count_parts(args.protein, args.records_per_file), args.protein
    write_json(args.output, {"parts": n, "records_per_file": args.records_per_file})
    logging.info("%s make(s) %d part(s)", source, n)


def cmd_run_info(args):
    from virnucflow.fingerprint import fingerprint, original_classifier_name
    from virnucflow.provenance import run_info, write_json

    classifier = {"path": args.classifier, "sha256": fingerprint(args.classifier),
                  "original": original_classifier_name(args.classifier)}
    write_json(args.output, run_info(args.sample, args.provenance, classifier, args.chunk_size))
    logging.info("run info of %s written to %s", args.sample, args.output)


def cmd_write_json(args):
    import json

    from virnucflow.provenance import write_json

    try:
        record = json.loads(args.document)
    except json.JSONDecodeError as e:
        raise InputError(f"write-json: the document is not JSON ({e}); pass one JSON value") from None
    write_json(args.output, record)


def cmd_embed(args):
    from virnucflow.embed_part import run_cli

    return run_cli(args, "virnucflow embed")


def cmd_merge(args):
    from virnucflow.features import merge_files

    # widths are checked against the classifier at classify time: the demo's tiny models are narrower
    merge_files(args.dnabert, args.esm, args.output, dna_dim=None, protein_dim=None)


def cmd_classify(args):
    from virnucflow.classifier import classify_files

    classify_files(args.model, args.merged, args.out_dir)


def cmd_classify_part(args):
    from virnucflow.classifier import classify_part

    n = classify_part(args.model, args.merged, args.first_part, args.part, args.records_per_file, args.output)
    logging.info("part %d: %d frames scored", args.part, n)


def cmd_assemble(args):
    from virnucflow.predictions import assemble

    assemble(args.part_tables, args.out_dir)
    logging.info("both tables of %d part(s) written to %s", len(args.part_tables), args.out_dir)


def cmd_demo_models(args):
    from virnucflow.demo_models import write_demo_models

    write_demo_models(args.out_dir, seed=args.seed)


def cmd_contigs(args):
    from virnucflow.contigs import call_contigs

    records, viral = call_contigs(
        args.fasta, args.predictions, args.highest, args.chunk_size, args.tsv, args.fasta_out,
        min_viral_fraction=args.min_viral_fraction,
    )
    logging.info("%d records, %d called virus (viral chunks >= %g of all chunks)", records, viral, args.min_viral_fraction)
    if args.table_page:
        from virnucflow.report_tables import write_contig_page

        shown = write_contig_page(args.sample or Path(args.fasta).name, args.tsv, args.table_page, args.table_rows)
        logging.info("page of the per-record calls (%d rows shown) written to %s", shown, args.table_page)


def cmd_report_plots(args):
    from virnucflow import report_data, report_plots

    if len({name for name, _ in args.sample}) != len(args.sample):
        raise InputError("a sample is given twice; give each --sample once")
    samples = [report_data.load_sample(name, path, args.benchmarks_dir) for name, path in args.sample]
    stats = [report_data.run_stats(s) for s in samples]
    report_plots.plot_score_distribution(samples, args.scores_plot)
    report_plots.plot_viral_fraction(samples, args.fraction_plot)
    report_plots.plot_run_stats(samples, stats, args.stats_plot)
    report_data.write_run_stats(samples, args.stats_table)
    if args.stats_page:
        from virnucflow.report_tables import write_stats_page

        write_stats_page(report_data.STATS_COLUMNS, stats, args.stats_page)
    logging.info("report figures for %d sample(s) written", len(samples))


def cmd_score_tracks(args):
    from virnucflow import report_data, report_plots

    records = None
    if args.fasta:
        from virnucflow.contigs import called_records

        results = Path(args.results_dir)
        records = called_records(args.fasta, results / report_data.RESULTS_NAME, results / report_data.HIGHEST_NAME,
                                 args.chunk_size, args.min_viral_fraction)
    sample = report_data.load_sample(args.sample, args.results_dir, contigs=records)
    report_plots.plot_score_tracks(sample, args.chunk_size, args.top, args.output)
    logging.info("score tracks of %s written to %s", args.sample, args.output)


def cmd_fetch_models(args):
    from virnucflow.fetch import config_snippet, default_items, fetch_models

    items = default_items(args.only, args.esm_base_url, args.hf_base_url, args.classifier_base_url)
    summary = fetch_models(args.dest, items, dnabert_revision=args.dnabert_revision,
                           retries=args.retries, timeout=args.timeout)
    logging.info("%d file(s) fetched (%d bytes downloaded), %d already present and verified",
                 len(summary.fetched), summary.downloaded_bytes, len(summary.reused))
    print(f"models are in {args.dest}; point the config at them:\n{config_snippet(args.dest)}")


def cmd_status(args):
    import json

    from virnucflow.status import collect, render

    if not Path(args.directory).is_dir():
        raise InputError(f"{args.directory} is not a directory; give the run's working directory with -d")
    report = collect(args.directory, args.sample_sheet, sidecars=not args.no_sidecar,
                     extra_endpoints=args.endpoint_file)
    try:
        print(json.dumps(report, indent=1) if args.json else render(report), flush=True)
    except BrokenPipeError:  # `virnucflow status | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_check(args):
    import os

    from virnucflow.preflight import check

    configfile = os.path.abspath(args.configfile)
    if not os.path.isfile(configfile):
        print(f"virnucflow check: error: config file {args.configfile} does not exist; give it with --configfile",
              file=sys.stderr)
        return 2
    if not os.path.isdir(args.directory):
        print(f"virnucflow check: error: {args.directory} is not a directory; give the run's working directory "
              "with -d", file=sys.stderr)
        return 2
    os.chdir(args.directory)  # as Snakemake's --directory: the config's relative paths start there
    problems, notes = check(configfile)
    if notes:
        print("\n".join(notes), flush=True)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print(f"{len(problems)} problem(s); fix them and run `virnucflow check` again", file=sys.stderr)
        return 1
    print(f"OK: {args.configfile} is ready to run")
    return 0


def _add_check_command(sub):
    p = sub.add_parser("check", help="check a config before a run: sample sheet, models, GPUs, disk space")
    p.add_argument("--configfile", default="config/config.yaml", help="the config (default config/config.yaml)")
    p.add_argument("--directory", "-d", default=".", help="the run's working directory (default .)")
    p.set_defaults(func=cmd_check)


def _fraction(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _add_call_options(p):
    """How records are called from their chunks (`contigs`, and `score-tracks` where it calls them itself)."""
    p.add_argument("--chunk-size", type=int, choices=(300, 500), required=True)
    p.add_argument("--min-viral-fraction", type=_fraction, default=0.5,
                   help="a record is viral when at least this fraction of its chunks is (default 0.5)")


def _add_report_commands(sub):
    p = sub.add_parser("contigs", help="per-record calls from the chunk tables: a TSV and a FASTA of the viral records")
    p.add_argument("--fasta", required=True, help="the sample's input FASTA (plain or gzipped)")
    p.add_argument("--predictions", required=True, help="prediction_results.txt")
    p.add_argument("--highest", required=True, help="prediction_results_highestscore.csv")
    _add_call_options(p)
    p.add_argument("--tsv", required=True, help="output table (virus_contigs.tsv)")
    p.add_argument("--fasta-out", required=True, help="output FASTA of the records called virus")
    p.add_argument("--table-page", default=None,
                   help="also the table as an HTML page (viral records first), for the report")
    p.add_argument("--sample", default=None, help="the sample's name on that page (default: the FASTA's file name)")
    from virnucflow.report_tables import MAX_ROWS

    p.add_argument("--table-rows", type=int, default=MAX_ROWS, help=f"records on that page (default {MAX_ROWS})")
    p.set_defaults(func=cmd_contigs)

    p = sub.add_parser("report-plots", help="the report's summary figures and run statistics over samples")
    p.add_argument("--sample", nargs=2, action="append", required=True, metavar=("NAME", "RESULTS_DIR"))
    p.add_argument("--benchmarks-dir", default=None, help="Snakemake benchmark folder (benchmarks/)")
    p.add_argument("--scores-plot", required=True)
    p.add_argument("--fraction-plot", required=True)
    p.add_argument("--stats-plot", required=True)
    p.add_argument("--stats-table", required=True)
    p.add_argument("--stats-page", default=None, help="also the table as an HTML page, for the report")
    p.set_defaults(func=cmd_report_plots)

    p = sub.add_parser("score-tracks", help="virus score along the top records of one sample (PNG)")
    p.add_argument("--sample", required=True, help="sample name")
    p.add_argument("--results-dir", required=True, help="results/<sample>")
    p.add_argument("--fasta", default=None,
                   help="the sample's input FASTA: the records are called from it and the chunk tables, as `contigs` "
                        "calls them, so the figure need not wait for virus_contigs.tsv (default: read that table)")
    _add_call_options(p)
    p.add_argument("--top", type=int, default=10, help="records to draw (default 10)")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_score_tracks)

    from virnucflow import fetch

    p = sub.add_parser("fetch-models", help="fetch ESM-2 3B, DNABERT-S and the classifiers once, with checksums")
    p.add_argument("--dest", required=True, help="directory to fetch into (a manifest.json records the checksums)")
    p.add_argument("--only", nargs="+", choices=fetch.GROUPS, default=list(fetch.GROUPS), help="fetch only these")
    p.add_argument("--dnabert-revision", default="main",
                   help="DNABERT-S hub commit; a branch is resolved to its commit and pinned in the manifest")
    p.add_argument("--esm-base-url", default=fetch.DEFAULT_ESM_BASE_URL)
    p.add_argument("--hf-base-url", default=fetch.DEFAULT_HF_BASE_URL)
    p.add_argument("--classifier-base-url", default=fetch.DEFAULT_CLASSIFIER_BASE_URL)
    p.add_argument("--retries", type=int, default=5, help="attempts per file, each resuming the last (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without data before an attempt fails")
    p.set_defaults(func=cmd_fetch_models)

    p = sub.add_parser("status", help="how far a workflow run in a directory has got (and its sidecars)")
    p.add_argument("--directory", "-d", default=".", help="the run's working directory (default .)")
    p.add_argument("--sample-sheet", default=None, help="list these samples, started or not")
    p.add_argument("--endpoint-file", action="append", default=[], help="also ask a sidecar started by hand")
    p.add_argument("--no-sidecar", action="store_true", help="do not ask the sidecars")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)


def cmd_run(args):
    from virnucflow.run_command import main as run

    return run(args)


USER_COMMANDS = ("run", "check", "status", "fetch-models", "make-demo-models")


def build_parser(command=None):
    """The parser; given the `command` to run, without the options of `run` and `embed` unless it is one of
    them: their import (numpy, zmq) would cost every other step's process about 0.1 s."""
    parser = argparse.ArgumentParser(prog="virnucflow", description="Viral short sequences found with ESM-2 and "
                                     "DNABERT-S, as VirNucPro does. Start with `virnucflow run -h`.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"virnucflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands", description="the first five are yours; the others are the "
                                "workflow's steps, which its rules run")

    p = sub.add_parser("run", help="FASTA files in, results out: the whole workflow in one command "
                       "(options after -- go to snakemake)",
                       epilog="Options after -- go to snakemake unchanged, such as: -- --keep-going")
    if command in (None, "run"):
        from virnucflow.run_command import add_arguments as add_run_arguments

        add_run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chunk", help="cut records into 300 or 500 bp windows, as the original does")
    p.add_argument("--size", type=int, choices=(300, 500), required=True)
    p.add_argument("input", help="FASTA, plain or gzipped")
    p.add_argument("output")
    p.set_defaults(func=cmd_chunk)

    p = sub.add_parser("shard", help="plan a sample's shards of about --shard-mb MB of its file "
                       "(a gzipped one is decompressed for them)")
    p.add_argument("--shard-mb", type=float, required=True, help="MB of the input file (as stored) per shard")
    p.add_argument("--shards", type=int, default=None, help="make exactly this many (default: from the file's size)")
    p.add_argument("input", help="FASTA, plain or gzipped")
    p.add_argument("out_dir", help="directory for the plan (plan.json)")
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser("prepare-shard", help="read one shard of a planned sample, chunk it and translate its "
                       "chunks (chunk + translate, streaming)")
    p.add_argument("--size", type=int, choices=(300, 500), required=True)
    p.add_argument("--shard", type=int, required=True, help="which shard, from 1")
    p.add_argument("plan", help="the directory written by `shard`")
    p.add_argument("--chunked", required=True)
    p.add_argument("--nucleotide", required=True)
    p.add_argument("--protein", required=True)
    p.add_argument("--ids", required=True, help="output: the shard's record ids, for the whole-sample checks")
    p.add_argument("--counts", required=True, help="output: the shard's counts (JSON)")
    p.set_defaults(func=cmd_prepare_shard)

    p = sub.add_parser("concatenate-shards", help="check the sample's record ids, then put its chunked and "
                       "kept-frame files together from its shards, in order")
    for name in ("chunked", "nucleotide", "protein"):
        p.add_argument(f"--{name}", required=True, help=f"the sample's {name} file")
        p.add_argument(f"--{name}-shards", nargs="+", required=True, help="the shards' files, in shard order")
    for name in ("ids", "counts"):
        p.add_argument(f"--{name}-shards", nargs="+", required=True, help=f"the shards' {name} files, in shard order")
    p.set_defaults(func=cmd_concatenate)

    p = sub.add_parser("translate", help="six-frame translation; keep frames without a stop codon")
    p.add_argument("input", help="chunked FASTA")
    p.add_argument("--nucleotide", required=True, help="output FASTA of the kept frames' DNA")
    p.add_argument("--protein", required=True, help="output FASTA of the kept frames' proteins")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("count-parts", help="how many parts the kept frames make (JSON), before splitting them")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--protein", help="the kept frames' proteins (identified_protein.faa)")
    source.add_argument("--frames", nargs="+", help="the shards' kept-frame counts (shard-frames' JSON files)")
    p.add_argument("--records-per-file", type=int, default=10_000)
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_count_parts)

    p = sub.add_parser("split", help="split kept frames into parts of N records (output_<k>.fa/.faa)")
    p.add_argument("--nucleotide", required=True)
    p.add_argument("--protein", required=True)
    p.add_argument("--records-per-file", type=int, default=10_000)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("split-part", help="write one part from the kept-frame files that hold it, the sample's or "
                       "its shards' (output_<k>.fa/.faa)")
    p.add_argument("--nucleotide-shards", nargs="+", required=True, help="kept-frame DNA files, in order")
    p.add_argument("--protein-shards", nargs="+", required=True, help="kept-frame protein files, in order")
    p.add_argument("--part", type=int, required=True, help="the part's number k (from 1): frames (k-1)N+1 .. kN")
    p.add_argument("--frames-before", nargs="*", default=[], metavar="JSON",
                   help="shard-frames files of the shards before the first one given (none: it starts the sample)")
    p.add_argument("--records-per-file", type=int, default=10_000)
    p.add_argument("--nucleotide", required=True)
    p.add_argument("--protein", required=True)
    p.set_defaults(func=cmd_split_part)

    p = sub.add_parser("shard-frames", help="how many kept frames one prepared shard holds (JSON)")
    p.add_argument("--counts", required=True, help="the shard's counts, written by prepare-shard")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_shard_frames)

    p = sub.add_parser("embed", help="embed one part: through a sidecar, or loading both models here")
    if command in (None, "embed"):
        from virnucflow.embed_part import add_arguments as add_embed_arguments

        add_embed_arguments(p, "in-process")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("merge", help="join DNABERT-S and ESM-2 vectors into the original's merged .pt")
    p.add_argument("--dnabert", required=True)
    p.add_argument("--esm", required=True)
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("classify", help="score merged features with an original .pth classifier")
    p.add_argument("--model", required=True, help="the original 300_model.pth/500_model.pth, or a state dict")
    p.add_argument("--out-dir", required=True)
    p.add_argument("merged", nargs="+", help="merged feature files ({'ids', 'data'} .pt)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("classify-part", help="score one part in the one-shot run's batches; write its table rows")
    p.add_argument("--model", required=True, help="the original 300_model.pth/500_model.pth, or a state dict")
    p.add_argument("--part", type=int, required=True, help="the part to score (from 1)")
    p.add_argument("--first-part", type=int, required=True, help="the part of the first merged file given")
    p.add_argument("--records-per-file", type=int, required=True)
    p.add_argument("--output", required=True, help="the part's rows of prediction_results.txt, no header")
    p.add_argument("merged", nargs="+", help="merged files of parts first-part, first-part+1, ... (the batch window)")
    p.set_defaults(func=cmd_classify_part)

    p = sub.add_parser("assemble-predictions", help="both prediction tables of a sample from its parts' rows")
    p.add_argument("--out-dir", required=True)
    p.add_argument("part_tables", nargs="+", help="the parts' rows, in part order")
    p.set_defaults(func=cmd_assemble)

    p = sub.add_parser("run-info", help="a sample's run_info.json: what produced its results")
    p.add_argument("--sample", required=True)
    p.add_argument("--classifier", required=True, help="the classifier file that scored the sample")
    p.add_argument("--chunk-size", type=int, required=True)
    p.add_argument("--output", required=True)
    p.add_argument("provenance", nargs="*", help="the parts' provenance records")
    p.set_defaults(func=cmd_run_info)

    p = sub.add_parser("write-json", help="write one JSON document atomically (the run's settings files)")
    p.add_argument("--output", required=True)
    p.add_argument("document", help="the JSON text")
    p.set_defaults(func=cmd_write_json)

    p = sub.add_parser("make-demo-models", help="write tiny random models in the real formats (demo, tests)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_models)

    _add_report_commands(sub)
    _add_check_command(sub)
    # --help lists the commands a user types first (a stable sort: each group keeps its order)
    order = {name: i for i, name in enumerate(USER_COMMANDS)}
    sub._choices_actions.sort(key=lambda action: order.get(action.dest, len(order)))
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:  # `virnucflow run ... -- SNAKEMAKE OPTIONS`: what follows goes to snakemake unchanged
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1:]
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
    args = parser.parse_args(argv)
    if extra and args.command != "run":
        parser.error("only `virnucflow run` takes options after --")
    args.snakemake_args = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s virnucflow %(levelname)s %(message)s",
    )
    try:
        return args.func(args) or 0
    except InputError as exc:
        print(f"virnucflow {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
