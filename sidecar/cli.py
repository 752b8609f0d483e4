"""`sidecar` command line: serve, ensure, status, stop, embed.

Only `serve` imports torch (lazily, after setting the allocator environment); the others are light
clients. Errors are one line on stderr with a non-zero exit, and `embed` leaves no partial output.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from . import protocol

EXIT_ERROR = 1
EXIT_DIED = 3  # the sidecar died mid-request: a retry with a fresh sidecar may succeed


def _serve_options(parser):
    group = parser.add_argument_group("server (the same options for serve, ensure and embed --ensure)")
    group.add_argument("--esm2", metavar="SOURCE", help="ESM-2 checkpoint file or fair-esm model name")
    group.add_argument("--dnabert-s", metavar="SOURCE", help="DNABERT-S directory or hub id")
    group.add_argument("--dnabert-revision", metavar="R", help="hub revision of DNABERT-S")
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    group.add_argument("--tcp", metavar="[HOST:]PORT", help="listen on TCP (CURVE-authenticated, needs "
                       "--secret-file) instead of a private ipc socket; HOST defaults to 127.0.0.1; port 0 picks one")
    group.add_argument("--secret-file", metavar="S", help="CURVE secret for --tcp (created 0600 if missing)")
    group.add_argument("--socket-dir", metavar="D", help="where the private ipc socket directory is made "
                       "(default $XDG_RUNTIME_DIR or the temp dir)")
    group.add_argument("--idle-timeout", type=float, default=0.0, metavar="S",
                       help="exit after S seconds without requests (0 = never; default 0)")
    group.add_argument("--mode", choices=("exact", "fast"),
                       help="numerics: exact = fp32, one sequence per forward, bit-identical to the in-process "
                       "`virnucflow embed`; fast = packed fp16 batches (cosine >= 0.999 to exact). "
                       "Default: fast on CUDA, exact on CPU")
    group.add_argument("--max-batch-tokens", type=int, metavar="N",
                       help="token budget of one compute batch, across requests (default 4096 in exact mode, "
                       "65536 in fast mode)")
    group.add_argument("--dedup-cache-mb", type=float, default=1024.0, metavar="MB",
                       help="per model, bytes of embeddings kept so that an identical sequence is embedded once "
                       "per sidecar lifetime (LRU; 0 disables; default 1024)")
    group.add_argument("--dedup-cache-entries", type=int, metavar="N",
                       help="per model, at most N cached embeddings (default: bounded by --dedup-cache-mb only)")
    group.add_argument("--max-queued-tokens", type=int, default=4_000_000, metavar="N",
                       help="outstanding tokens beyond which requests are answered BUSY (default 4000000)")
    group.add_argument("--max-queued-requests", type=int, default=1024, metavar="N",
                       help="outstanding requests beyond which requests are answered BUSY (default 1024)")
    for model, field in protocol.SEQ_LEN_FIELDS.items():
        group.add_argument(protocol.option_name(field), type=int, default=getattr(protocol.LIMITS, field), metavar="N",
                           help=f"longest {model} sequence accepted, in {protocol.UNITS[model]}; a request with a "
                           f"longer one is refused at once (default %(default)s; the workflow sends <= 501 nt, "
                           f"<= 167 residues)")
    group.add_argument("--memory-fraction", type=float, metavar="X", help="CUDA per-process memory fraction")
    group.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    group.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                       help="on stop, seconds to finish queued work before rejecting it (default 30)")
    group.add_argument("--log-interval", type=float, default=30.0, metavar="S",
                       help="seconds between throughput log lines (default 30)")
    return group


def _serve_args(ns):
    """The serve options of a parsed namespace, as an argument list for a child `sidecar serve`."""
    args = []
    for opt in ("esm2", "dnabert_s", "dnabert_revision", "device", "tcp", "secret_file", "socket_dir",
                "idle_timeout", "mode", "max_batch_tokens", "dedup_cache_mb", "dedup_cache_entries",
                "max_queued_tokens", "max_queued_requests", *protocol.SEQ_LEN_FIELDS.values(),
                "memory_fraction", "threads", "drain_timeout", "log_interval"):
        value = getattr(ns, opt)
        if value is not None:
            args += ["--" + opt.replace("_", "-"), str(value)]
    return args


def _models(ns):
    models = {}
    if ns.esm2:
        models["esm2"] = (ns.esm2, None)
    if ns.dnabert_s:
        models["dnabert_s"] = (ns.dnabert_s, ns.dnabert_revision)
    if not models:
        raise _UserError("give at least one model: --esm2 SOURCE and/or --dnabert-s SOURCE")
    return models


def _limits(ns):
    """The protocol limits with the serve options' sequence lengths; a one-line error if unusable."""
    limits = dataclasses.replace(protocol.LIMITS, **{f: getattr(ns, f) for f in protocol.SEQ_LEN_FIELDS.values()})
    try:
        return limits.check()
    except ValueError as exc:
        raise _UserError(str(exc)) from None


class _UserError(Exception):
    pass


def build_parser():
    parser = argparse.ArgumentParser(prog="sidecar", description="Resident ESM-2 + DNABERT-S embedding server.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a sidecar in the foreground (exec it from a service rule)")
    serve.add_argument("--endpoint-file", required=True, metavar="F", help="endpoint file to write")
    serve.add_argument("--watch-pid", type=int, metavar="PID", help="exit when this process is gone")
    serve.add_argument("--log", metavar="F", help="log file (default stderr)")
    _serve_options(serve)

    ensure = sub.add_parser("ensure", help="start a detached sidecar unless one answers at the endpoint file")
    ensure.add_argument("--endpoint-file", required=True, metavar="F")
    ensure.add_argument("--watch-pid", type=int, metavar="PID", help="the started sidecar exits when PID is gone")
    ensure.add_argument("--wait", choices=("bound", "ready"), default="bound",
                        help="return once bound (default) or once the models are loaded")
    ensure.add_argument("--timeout", type=float, default=120.0, metavar="S")
    ensure.add_argument("--log", metavar="F", help="the started server's log and output (default <endpoint file>.log)")
    _serve_options(ensure)

    status = sub.add_parser("status", help="print the sidecar's status as JSON")
    status.add_argument("--endpoint-file", required=True, metavar="F")
    status.add_argument("--timeout", type=float, default=10.0, metavar="S")

    stop = sub.add_parser("stop", help="ask the sidecar to finish its work and exit; wait until it has")
    stop.add_argument("--endpoint-file", required=True, metavar="F")
    stop.add_argument("--timeout", type=float, default=60.0, metavar="S")

    embed = sub.add_parser("embed", help="embed one file pair through the sidecar (the per-file job)")
    embed.add_argument("--endpoint-file", required=True, metavar="F")
    embed.add_argument("--nucleotide", metavar="X.fa", help="DNA FASTA, embedded with DNABERT-S")
    embed.add_argument("--protein", metavar="X.faa", help="protein FASTA, embedded with ESM-2")
    embed.add_argument("--dnabert-out", metavar="A.npz", help="DNABERT-S embedding file to write")
    embed.add_argument("--esm-out", metavar="B.npz", help="ESM-2 embedding file to write")
    embed.add_argument("--ready-timeout", type=float, default=1800.0, metavar="S",
                       help="how long to wait for the models to load (default 1800)")
    embed.add_argument("--ensure", action="store_true",
                       help="start a sidecar with the server options below if none answers")
    embed.add_argument("--watch-pid", type=int, metavar="PID",
                       help="with --ensure: a sidecar started here exits when PID is gone")
    embed.add_argument("--log", metavar="F", help="with --ensure: the started server's log")
    _serve_options(embed)
    return parser


def main(argv=None):
    ns = build_parser().parse_args(argv)
    try:
        return _COMMANDS[ns.command](ns)
    except KeyboardInterrupt:
        print("sidecar: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user, whatever went wrong
        from .client import SidecarDied

        print(f"sidecar {ns.command}: {' '.join(str(exc).split()) or exc.__class__.__name__}", file=sys.stderr)
        return EXIT_DIED if isinstance(exc, SidecarDied) else EXIT_ERROR


def cmd_serve(ns):
    from . import server

    if ns.log:
        Path(ns.log).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(ns.log) if ns.log else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s sidecar[{os.getpid()}] %(levelname)s %(message)s"))
    logger = logging.getLogger("sidecar")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    from .backends import default_mode

    mode = ns.mode or default_mode(ns.device)
    max_batch_tokens = ns.max_batch_tokens or (65536 if mode == "fast" else 4096)
    config = server.ServeConfig(
        endpoint_file=ns.endpoint_file, models=_models(ns), device=ns.device, tcp=ns.tcp,
        secret_file=ns.secret_file, socket_dir=ns.socket_dir, watch_pid=ns.watch_pid,
        idle_timeout=ns.idle_timeout, max_batch_tokens=max_batch_tokens, mode=mode,
        dedup_cache_mb=ns.dedup_cache_mb, dedup_cache_entries=ns.dedup_cache_entries,
        max_queued_tokens=ns.max_queued_tokens, max_queued_requests=ns.max_queued_requests,
        memory_fraction=ns.memory_fraction, threads=ns.threads, drain_timeout=ns.drain_timeout,
        log_interval=ns.log_interval, limits=_limits(ns))
    return server.run(config)


def cmd_ensure(ns):
    from .launcher import ensure_sidecar

    _models(ns)
    _limits(ns)
    info = ensure_sidecar(ns.endpoint_file, _serve_args(ns), watch_pid=ns.watch_pid, wait=ns.wait,
                          timeout=ns.timeout, log_file=ns.log)
    print(json.dumps({"pid": info["pid"], "endpoint": info["endpoint"]}))
    return 0


def cmd_status(ns):
    from .client import SidecarClient

    with SidecarClient(ns.endpoint_file) as client:
        print(json.dumps(client.status(timeout=ns.timeout), indent=1, sort_keys=True))
    return 0


def cmd_stop(ns):
    import time

    from . import rendezvous
    from .client import SidecarClient, SidecarError

    with SidecarClient(ns.endpoint_file) as client:
        client.stop()
        info = client.info
    deadline = time.monotonic() + ns.timeout
    while time.monotonic() < deadline:
        if rendezvous.is_local(info):
            if not rendezvous.pid_alive(info["pid"], info.get("pid_start")):
                return 0
        elif not Path(ns.endpoint_file).exists():
            return 0
        time.sleep(0.1)
    raise SidecarError(f"{rendezvous.describe(info)} did not exit within {ns.timeout:g} s")


def cmd_embed(ns):
    from .client import SidecarClient, SidecarDied

    jobs = []  # (model, fasta, output)
    if bool(ns.nucleotide) != bool(ns.dnabert_out) or bool(ns.protein) != bool(ns.esm_out):
        raise _UserError("--nucleotide goes with --dnabert-out, --protein with --esm-out")
    if ns.nucleotide:
        jobs.append(("dnabert_s", ns.nucleotide, ns.dnabert_out))
    if ns.protein:
        jobs.append(("esm2", ns.protein, ns.esm_out))
    if not jobs:
        raise _UserError("nothing to embed: give --nucleotide/--dnabert-out and/or --protein/--esm-out")
    records = {model: _read_fasta(path) for model, path, _ in jobs}
    attempts = 2 if ns.ensure else 1
    for attempt in range(attempts):
        if ns.ensure:
            from .launcher import ensure_sidecar

            _models(ns)
            _limits(ns)
            ensure_sidecar(ns.endpoint_file, _serve_args(ns), watch_pid=ns.watch_pid, log_file=ns.log)
        try:
            with SidecarClient(ns.endpoint_file, ready_timeout=ns.ready_timeout) as client:
                arrays = {model: client.embed(model, [r[0] for r in records[model]], [r[1] for r in records[model]],
                                              label=path)
                          for model, path, _ in jobs}
            break
        except SidecarDied:
            if attempt + 1 == attempts:
                raise
    _write_all([(out, [r[0] for r in records[model]], arrays[model]) for model, _, out in jobs])
    return 0


def _read_fasta(path):
    """A part's records; a part is empty when its sample kept no frame."""
    from virnucflow.embedding import read_part

    try:
        ids, seqs = read_part(path)
    except FileNotFoundError:
        raise _UserError(f"input file {path} does not exist") from None
    return list(zip(ids, seqs))


def _write_all(outputs):
    """Write every output atomically; if one fails, remove the ones already written."""
    from virnucflow.embedding_files import save_embeddings

    written = []
    try:
        for path, ids, array in outputs:
            save_embeddings(path, ids, array)  # itself atomic
            written.append(path)
    except BaseException:
        for path in written:
            Path(path).unlink(missing_ok=True)
        raise


_COMMANDS = {"serve": cmd_serve, "ensure": cmd_ensure, "status": cmd_status, "stop": cmd_stop,
             "embed": cmd_embed}
