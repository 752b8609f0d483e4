"""Where a sidecar that a command starts listens (`--tcp`, `--secret-file`, `--socket-dir`): not what it
computes (virnucflow.embedding_settings). Shared by `sidecar serve/ensure` and `virnucflow embed --ensure`,
which may start one. Standard library only."""

SIDECAR_SERVE_OPTIONS = ("tcp", "secret_file", "socket_dir")  # how a started sidecar listens, not what it computes


def add_sidecar_listen_options(parser):
    """Where a sidecar listens: shared by `sidecar serve/ensure` and an embed that may start one."""
    group = parser.add_argument_group("where a started sidecar listens")
    group.add_argument("--tcp", metavar="[HOST:]PORT", help="listen on TCP (CURVE-authenticated, needs "
                       "--secret-file) instead of a private ipc socket; HOST defaults to 127.0.0.1; port 0 picks one")
    group.add_argument("--secret-file", metavar="S", help="CURVE secret for --tcp (created 0600 if missing)")
    group.add_argument("--socket-dir", metavar="D", help="where the private ipc socket directory is made "
                       "(default $XDG_RUNTIME_DIR or the temp dir)")
    return group


def listen_args(ns) -> list[str]:
    args = []
    for name in SIDECAR_SERVE_OPTIONS:
        if getattr(ns, name, None) is not None:
            args += ["--" + name.replace("_", "-"), str(getattr(ns, name))]
    return args
