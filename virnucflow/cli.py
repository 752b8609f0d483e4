"""The `virnucflow` command: one subcommand per pipeline step; heavy imports happen inside each step."""

import argparse
import logging
import sys

from virnucflow.errors import InputError


def cmd_chunk(args):
    from virnucflow.atomic import atomic_path
    from virnucflow.chunking import chunk_records
    from virnucflow.fasta import read_fasta, write_fasta

    with atomic_path(args.output) as tmp, open(tmp, "w") as fh:
        n = 0
        for record in chunk_records(read_fasta(args.input), args.size):
            write_fasta(fh, [record], width=60)
            n += 1
        if n == 0:
            raise InputError(f"{args.input}: every record is empty; nothing to classify")
    logging.info("wrote %d chunks of up to %d bp to %s", n, args.size, args.output)


def cmd_translate(args):
    from virnucflow.atomic import atomic_path
    from virnucflow.fasta import read_fasta, write_fasta
    from virnucflow.translation import kept_frames

    with atomic_path(args.nucleotide) as nuc_tmp, atomic_path(args.protein) as prot_tmp:
        with open(nuc_tmp, "w") as nuc, open(prot_tmp, "w") as prot:
            chunks = kept = 0
            for chunk_id, seq in read_fasta(args.input):
                chunks += 1
                for frame_id, nucleotide, protein in kept_frames(chunk_id, seq):
                    write_fasta(nuc, [(frame_id, nucleotide)])
                    write_fasta(prot, [(frame_id, protein)])
                    kept += 1
    logging.info("%d chunks, %d frames without a stop codon", chunks, kept)


def cmd_split(args):
    from virnucflow.split import split_parts

    n = split_parts(args.nucleotide, args.protein, args.out_dir, args.records_per_file)
    logging.info("wrote %d part(s) to %s", n, args.out_dir)


def cmd_embed(args):
    from virnucflow.embedding import embed_part_in_process

    embed_part_in_process(
        nucleotide_fa=args.nucleotide, protein_faa=args.protein,
        dnabert_out=args.dnabert_out, esm_out=args.esm_out,
        esm2_source=args.esm2, dnabert_source=args.dnabert_s,
        dnabert_revision=args.dnabert_revision, device=args.device,
    )


def cmd_merge(args):
    from virnucflow.features import merge_files

    # widths are checked against the classifier at classify time: the demo's tiny models are narrower
    merge_files(args.dnabert, args.esm, args.output, dna_dim=None, protein_dim=None)


def cmd_classify(args):
    from virnucflow.classifier import classify_files

    classify_files(args.model, args.merged, args.out_dir)


def cmd_demo_models(args):
    from virnucflow.demo_models import write_demo_models

    write_demo_models(args.out_dir, seed=args.seed)


def build_parser():
    parser = argparse.ArgumentParser(prog="virnucflow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chunk", help="cut records into 300 or 500 bp windows, as the original does")
    p.add_argument("--size", type=int, choices=(300, 500), required=True)
    p.add_argument("input", help="FASTA, plain or gzipped")
    p.add_argument("output")
    p.set_defaults(func=cmd_chunk)

    p = sub.add_parser("translate", help="six-frame translation; keep frames without a stop codon")
    p.add_argument("input", help="chunked FASTA")
    p.add_argument("--nucleotide", required=True, help="output FASTA of the kept frames' DNA")
    p.add_argument("--protein", required=True, help="output FASTA of the kept frames' proteins")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("split", help="split kept frames into parts of N records (output_<k>.fa/.faa)")
    p.add_argument("--nucleotide", required=True)
    p.add_argument("--protein", required=True)
    p.add_argument("--records-per-file", type=int, default=10_000)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("embed", help="embed one part in this process (loads both models, as the original)")
    p.add_argument("--nucleotide", required=True)
    p.add_argument("--protein", required=True)
    p.add_argument("--dnabert-out", required=True, help=".npz of DNABERT-S means")
    p.add_argument("--esm-out", required=True, help=".npz of ESM-2 means")
    p.add_argument("--esm2", required=True, help="fair-esm model name or checkpoint path")
    p.add_argument("--dnabert-s", required=True, help="hub id or local model directory")
    p.add_argument("--dnabert-revision", default=None, help="pinned hub revision (with a hub id)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
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

    p = sub.add_parser("make-demo-models", help="write tiny random models in the real formats (demo, tests)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_models)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s virnucflow %(levelname)s %(message)s",
    )
    try:
        args.func(args)
    except InputError as exc:
        print(f"virnucflow {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
