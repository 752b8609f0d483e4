"""Embed one part, the per-file step: one command, two transports.

Reads a part's DNA and protein FASTA files, gets their DNABERT-S and ESM-2 vectors either from a
resident sidecar (`--transport sidecar`: a torch-free ZeroMQ client) or by loading both models in this
process as the original does (`--transport in-process`), and writes the two embedding files and the
part's provenance record, all or nothing. `virnucflow embed` and `sidecar embed` are this command
(their transport defaults differ). Through a sidecar, the client first asks what the sidecar serves
and refuses one whose models or numeric mode differ from the settings that this run asks for.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.listen_options import add_sidecar_listen_options
from virnucflow.embedding_settings import CLIENT, IN_PROCESS, SERVE, EmbeddingSettings
from virnucflow.errors import InputError

SIDECAR = "sidecar"
TRANSPORTS = (SIDECAR, "in-process")


def add_arguments(parser, transport: str):
    parser.add_argument("--transport", choices=TRANSPORTS, default=transport,
                        help=f"where the models run: a resident sidecar, or this process (default {transport})")
    parser.add_argument("--nucleotide", metavar="X.fa", help="DNA FASTA, embedded with DNABERT-S")
    parser.add_argument("--protein", metavar="X.faa", help="protein FASTA, embedded with ESM-2")
    parser.add_argument("--dnabert-out", metavar="A.npz", help="DNABERT-S embedding file to write")
    parser.add_argument("--esm-out", metavar="B.npz", help="ESM-2 embedding file to write")
    parser.add_argument("--provenance-out", metavar="P.json", help="the part's provenance record to write")
    side = parser.add_argument_group("sidecar transport")
    side.add_argument("--endpoint-file", metavar="F", action="append", help="the sidecar's endpoint file; "
                      "repeated: the part goes to the one that will finish it first (the least outstanding work)")
    side.add_argument("--ensure", action="store_true", help="start a sidecar with these settings if none answers "
                      "at the (first) endpoint file")
    side.add_argument("--watch-pid", type=int, metavar="PID", help="with --ensure: a sidecar started here exits "
                      "when PID is gone")
    side.add_argument("--log", metavar="F", help="with --ensure: the started server's log")
    add_sidecar_listen_options(parser)
    EmbeddingSettings.add_arguments(parser, (SERVE, CLIENT, IN_PROCESS))


def _jobs(ns):
    if bool(ns.nucleotide) != bool(ns.dnabert_out) or bool(ns.protein) != bool(ns.esm_out):
        raise InputError("--nucleotide goes with --dnabert-out, --protein with --esm-out")
    jobs = []
    if ns.nucleotide:
        jobs.append(("dnabert_s", ns.nucleotide, ns.dnabert_out))
    if ns.protein:
        jobs.append(("esm2", ns.protein, ns.esm_out))
    if not jobs:
        raise InputError("nothing to embed: give --nucleotide/--dnabert-out and/or --protein/--esm-out")
    return jobs


def read_part(path):
    """(ids, sequences) of a part file; a part may be empty when no frame was kept."""
    from virnucflow.fasta import read_fasta

    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    if path.stat().st_size == 0:
        return [], []
    records = list(read_fasta(path))
    return [r[0] for r in records], [r[1] for r in records]


def run(ns) -> None:
    """Embed the part that `ns` names and write its outputs; raises InputError / SidecarError (one line)."""
    jobs = _jobs(ns)
    settings = EmbeddingSettings.from_namespace(ns)
    parts = {model: read_part(path) for model, path, _ in jobs}
    if ns.transport == SIDECAR:
        from virnucflow.embed_via_sidecar import embed_via_sidecar

        arrays, record = embed_via_sidecar(ns, settings, parts, {model: path for model, path, _ in jobs})
    else:
        from virnucflow.embedding import embed_in_process

        arrays, record = embed_in_process(settings, parts)
    _write_all([(out, parts[model][0], arrays[model]) for model, _, out in jobs], ns.provenance_out, record)


def _write_all(outputs, provenance_out, record):
    """Write every output atomically; if one fails, remove the ones already written."""
    from virnucflow.embedding_files import save_embeddings
    from virnucflow.provenance import write_json

    written = []
    try:
        for path, ids, array in outputs:
            save_embeddings(path, ids, array)  # itself atomic
            written.append(path)
        if provenance_out:
            write_json(provenance_out, record)
    except BaseException:
        for path in written:
            Path(path).unlink(missing_ok=True)
        raise


def run_cli(ns, prog: str) -> int:
    """`run` for a command line: the exit code, and one line on stderr for any failure."""
    import sys

    try:
        run(ns)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user, whatever went wrong; a dead sidecar exits 3
        print(f"{prog}: error: {' '.join(str(exc).split()) or exc.__class__.__name__}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    return 0
