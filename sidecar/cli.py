"""`sidecar` command line: serve, ensure, status, stop, embed.

Only `serve` imports torch (lazily, after setting the allocator environment); the others are light
clients. Errors are one line on stderr with a non-zero exit, and `embed` leaves no partial output.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EXIT_ERROR = 1


def _serve_options(parser):
    """The options of a server: the embedding settings (defined once, in virnucflow.embedding_settings) and
    where it listens."""
    from .listen_options import add_sidecar_listen_options
    from virnucflow.embedding_settings import SERVE, EmbeddingSettings

    EmbeddingSettings.add_arguments(parser, SERVE, "server (the same options for serve, ensure and embed --ensure)")
    add_sidecar_listen_options(parser)


def _settings(ns):
    """The embedding settings of a parsed command line; at least one model must be given."""
    from virnucflow.embedding_settings import EmbeddingSettings

    settings = EmbeddingSettings.from_namespace(ns)
    if not settings.models():
        raise _UserError("give at least one model: --esm2 SOURCE and/or --dnabert-s SOURCE")
    return settings


def _serve_args(ns):
    """The serve options of a parsed namespace, as an argument list for a child `sidecar serve`."""
    from .listen_options import listen_args
    from virnucflow.embedding_settings import SERVE

    return _settings(ns).to_args(SERVE) + listen_args(ns)


class _UserError(Exception):
    pass


def build_parser():
    parser = argparse.ArgumentParser(prog="sidecar", description="Resident ESM-2 + DNABERT-S embedding server.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a sidecar in the foreground (exec it from a service rule)")
    serve.add_argument("--endpoint-file", required=True, metavar="F", help="endpoint file to write")
    serve.add_argument("--watch-pid", type=int, metavar="PID", help="exit when this process is gone")
    serve.add_argument("--lease-dir", metavar="DIR", help="exit once DIR has held a lease (*.started, one per sample "
                       "that needs this sidecar) and holds none; remove those left when stopping otherwise")
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

    from virnucflow.embed_part import add_arguments as add_embed_arguments

    embed = sub.add_parser("embed", help="embed one file pair through the sidecar (the per-file job); "
                           "the same command as `virnucflow embed`, with the sidecar transport by default")
    add_embed_arguments(embed, "sidecar")
    return parser


def main(argv=None):
    ns = build_parser().parse_args(argv)
    try:
        return _COMMANDS[ns.command](ns)
    except KeyboardInterrupt:
        print("sidecar: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user, whatever went wrong; SidecarDied exits 3
        print(f"sidecar {ns.command}: {' '.join(str(exc).split()) or exc.__class__.__name__}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_ERROR)


def cmd_serve(ns):
    from . import safe_files, server

    # not logging.FileHandler: it would follow a link planted as the log
    stream = os.fdopen(safe_files.open_append(ns.log, "log file"), "a") if ns.log else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"%(asctime)s sidecar[{os.getpid()}] %(levelname)s %(message)s"))
    logger = logging.getLogger("sidecar")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return server.run(_settings(ns), ns.endpoint_file, tcp=ns.tcp, secret_file=ns.secret_file,
                      socket_dir=ns.socket_dir, watch_pid=ns.watch_pid, lease_dir=ns.lease_dir)


def cmd_ensure(ns):
    from .launcher import ensure_sidecar

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
    from virnucflow.embed_part import run

    run(ns)
    return 0


_COMMANDS = {"serve": cmd_serve, "ensure": cmd_ensure, "status": cmd_status, "stop": cmd_stop,
             "embed": cmd_embed}
