"""No other local user can pose as the user's sidecar.

An endpoint file, lock, log, secret or socket that another user owns, may write, or planted as a link is
refused with one line naming it, and then nothing is sent, written, created or appended. The tests that
need a second user (uid 65534) chown files to it or run a real `sidecar serve` as it: they need root (CI
runs as root) and skip otherwise.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq

from sidecar import auth, protocol, rendezvous, safe_files
from sidecar.client import SidecarClient, SidecarError, SidecarNotOurs
from sidecar.launcher import ensure_sidecar

REPO = Path(__file__).resolve().parents[1]
OTHER = 65534  # nobody
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="making files of another user needs root (CI runs as root)")


def endpoint_info(endpoint="ipc:///nonexistent/socket", pid=999999, **extra):
    return {"protocol": protocol.PROTOCOL, "version": protocol.VERSION, "endpoint": endpoint, "pid": pid,
            "host": rendezvous.hostname(), **extra}


def write_endpoint(path, info=None, mode=0o644, owner=None):
    path.write_text(json.dumps(info or endpoint_info()))
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


def one_line(message):
    assert "\n" not in str(message).strip(), message
    return str(message)


def sidecar_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "sidecar", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def assert_refused(proc, *words):
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


# ---- the checks themselves (unit) ---------------------------------------------------------------

@needs_root
@pytest.mark.unit
def test_an_endpoint_file_of_another_user_is_refused(tmp_path):
    planted = write_endpoint(tmp_path / "ep.json", owner=OTHER)
    with pytest.raises(safe_files.UnsafePath) as caught:
        rendezvous.read(planted)
    message = one_line(caught.value)
    assert str(planted) in message and "uid 65534" in message and "remove it" in message
    with pytest.raises(SidecarNotOurs, match="uid 65534"):
        SidecarClient(planted).connect()


@pytest.mark.unit
def test_a_group_or_world_writable_endpoint_file_is_refused(tmp_path):
    for mode in (0o664, 0o646):
        open_file = write_endpoint(tmp_path / "ep.json", mode=mode)
        with pytest.raises(safe_files.UnsafePath) as caught:
            rendezvous.read(open_file)
        message = one_line(caught.value)
        assert f"mode {mode:04o}" in message and f"chmod go-w {open_file}" in message


@pytest.mark.unit
def test_a_link_or_a_fifo_where_the_endpoint_file_belongs_is_refused(tmp_path):
    real = write_endpoint(tmp_path / "real.json")
    (tmp_path / "link.json").symlink_to(real)
    with pytest.raises(safe_files.UnsafePath, match="link.json is a symbolic link"):
        rendezvous.read(tmp_path / "link.json")
    os.link(real, tmp_path / "hard.json")
    with pytest.raises(safe_files.UnsafePath, match="hard.json has 2 hard links"):
        rendezvous.read(tmp_path / "hard.json")
    os.mkfifo(tmp_path / "fifo.json")  # must not hang the reader
    with pytest.raises(safe_files.UnsafePath, match="fifo.json is not a file"):
        rendezvous.read(tmp_path / "fifo.json")
    (tmp_path / "dir.log").mkdir()
    with pytest.raises(safe_files.UnsafePath, match="dir.log is not a file"):
        safe_files.open_append(tmp_path / "dir.log", "log file")


@pytest.mark.unit
def test_a_refused_endpoint_file_is_neither_used_nor_replaced_by_ensure(tmp_path):
    planted = write_endpoint(tmp_path / "ep.json", mode=0o666)
    before = planted.read_bytes()
    with pytest.raises(SidecarNotOurs, match="chmod go-w"):
        ensure_sidecar(planted, ["--esm2", tmp_path / "never_loaded.pt"], timeout=5)
    assert planted.read_bytes() == before
    assert not (tmp_path / "ep.json.log").exists()  # no server was started


@pytest.mark.unit
def test_a_linked_lock_is_refused_and_its_target_not_created(tmp_path):
    target = tmp_path / "victim" / "created_by_the_lock"
    target.parent.mkdir()
    (tmp_path / "ep.json.lock").symlink_to(target)
    with pytest.raises(SidecarNotOurs) as caught:
        ensure_sidecar(tmp_path / "ep.json", ["--esm2", tmp_path / "never_loaded.pt"], timeout=5)
    assert "lock file" in one_line(caught.value) and "symbolic link" in str(caught.value)
    assert not target.exists() and not (tmp_path / "ep.json").exists()


@pytest.mark.unit
def test_a_linked_log_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("the victim's own file\n")
    (tmp_path / "ep.json.log").symlink_to(target)
    with pytest.raises(SidecarNotOurs) as caught:
        ensure_sidecar(tmp_path / "ep.json", ["--esm2", tmp_path / "never_loaded.pt"], timeout=5)
    assert "log file" in one_line(caught.value) and "symbolic link" in str(caught.value)
    assert target.read_text() == "the victim's own file\n" and not (tmp_path / "ep.json").exists()


@pytest.mark.unit
def test_files_and_directories_made_for_the_sidecar_are_private(tmp_path):
    rendezvous.write(tmp_path / "new" / "ep.json", endpoint_info())
    os.close(safe_files.open_append(tmp_path / "logs" / "ep.log", "log file"))
    for directory in ("new", "logs"):
        assert stat.S_IMODE((tmp_path / directory).stat().st_mode) == 0o700
    for file in ("new/ep.json", "logs/ep.log"):
        assert stat.S_IMODE((tmp_path / file).stat().st_mode) == 0o600
    assert rendezvous.read(tmp_path / "new" / "ep.json")["pid"] == 999999


@needs_root
@pytest.mark.unit
def test_a_secret_file_of_another_user_is_refused(tmp_path):
    secret = tmp_path / "secret.json"
    auth.create(secret)
    os.chown(secret, OTHER, OTHER)
    with pytest.raises(auth.SecretError, match="owned by .*uid 65534"):
        auth.load(secret)
    endpoint = write_endpoint(tmp_path / "ep.json", endpoint_info(
        "tcp://127.0.0.1:9", auth={"mechanism": "curve", "secret_file": str(secret)}))
    with pytest.raises(SidecarError, match="needs its secret: .*uid 65534"):
        SidecarClient(endpoint).connect()


@pytest.mark.unit
def test_a_tcp_endpoint_without_authentication_or_an_unknown_one_is_refused(tmp_path):
    open_tcp = write_endpoint(tmp_path / "tcp.json", endpoint_info("tcp://127.0.0.1:9", auth=None))
    with pytest.raises(SidecarNotOurs, match="without authentication"):
        SidecarClient(open_tcp).connect()
    other = write_endpoint(tmp_path / "ws.json", endpoint_info("ws://127.0.0.1:9"))
    with pytest.raises(SidecarNotOurs, match="neither an ipc:// nor a tcp://"):
        SidecarClient(other).connect()


@pytest.mark.unit
def test_an_ipc_socket_in_a_directory_open_to_others_is_refused(tmp_path):
    socket_dir = tmp_path / "sock"
    socket_dir.mkdir(mode=0o700)
    context = zmq.Context()
    server = context.socket(zmq.ROUTER)
    server.bind(f"ipc://{socket_dir}/socket")
    try:
        endpoint = write_endpoint(tmp_path / "ep.json", endpoint_info(f"ipc://{socket_dir}/socket", pid=os.getpid()))
        with SidecarClient(endpoint) as client:  # ours and private: connects, through the checked directory
            client.sock.send_multipart(protocol.ping(request_id="p"))
            assert server.poll(5000) and protocol.decode_header(server.recv_multipart()[1])["id"] == "p"
        os.chmod(socket_dir, 0o755)
        with pytest.raises(SidecarNotOurs) as caught:
            SidecarClient(endpoint).connect()
        assert f"socket directory {socket_dir} has mode 0755" in one_line(caught.value)
        assert "remove it" in str(caught.value) and str(endpoint) in str(caught.value)
    finally:
        server.close(linger=0)
        context.term()


# ---- the command line, and a real server of another user (process) -----------------------------

@pytest.fixture(scope="module")
def other_users_sidecar(demo_models):
    """A real `sidecar serve` running as uid 65534 in a directory of its own, with the demo models.

    Python starts as root and drops to uid 65534 only after loading the models once, so that it can
    import from an interpreter installed where that user cannot read (e.g. under /root)."""
    if os.geteuid() != 0:
        pytest.skip("running a server as another user needs root (CI runs as root)")
    home = Path(tempfile.mkdtemp(prefix="vnf-other-user-"))
    home.chmod(0o777)
    models = shutil.copytree(demo_models, home / "models")
    subprocess.run(["chmod", "-R", "a+rX", str(models)], check=True)
    esm2, dnabert = models / "esm2_t2_demo.pt", models / "dnabert_s_demo"
    drop_then_serve = (
        "import os, sys\n"
        "from sidecar import cli\n"
        "from virnucflow.models.dnabert_s import load_dnabert_s\n"
        "from virnucflow.models.esm2 import load_esm2\n"
        "load_esm2(sys.argv[1]); load_dnabert_s(sys.argv[2])\n"
        f"os.setgroups([]); os.setgid({OTHER}); os.setuid({OTHER})\n"
        "sys.exit(cli.main(sys.argv[3:]))\n")
    endpoint = home / "sidecar.json"
    proc = subprocess.Popen([sys.executable, "-c", drop_then_serve, esm2, dnabert, "serve", "--endpoint-file",
                             endpoint, "--log", home / "sidecar.log", "--socket-dir", home, "--threads", "1",
                             "--esm2", esm2, "--dnabert-s", dnabert], cwd=home, env=dict(os.environ, HOME=str(home)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not endpoint.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (home / "sidecar.log").read_text()
            time.sleep(0.05)
        info = json.loads(endpoint.read_text())
        assert endpoint.stat().st_uid == OTHER
        yield {"info": info, "endpoint_file": endpoint, "models": models}
        assert requests_served(info) == 0, "the other user's server got a request"
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(home)


def requests_served(info):
    """What the other user's server itself says it served (asked on a raw socket, as root)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(info["endpoint"])
    sock.send_multipart(protocol.status(request_id="s"))
    assert sock.poll(10000), "no status reply"
    head = protocol.decode_header(sock.recv_multipart()[0])
    sock.close()
    return sum(model["requests"] for model in head["models"].values())


def footprint(path):
    st = os.lstat(path)
    return st.st_ino, st.st_uid, st.st_mode, st.st_mtime_ns, path.read_bytes()


def fasta_inputs(directory):
    (directory / "x.fa").write_text(">d0\nACGTACGTAA\n")
    (directory / "x.faa").write_text(">p0\nMKVLA\n")
    return ["--nucleotide", directory / "x.fa", "--protein", directory / "x.faa",
            "--dnabert-out", directory / "out" / "A.npz", "--esm-out", directory / "out" / "B.npz"]


@pytest.mark.process
@pytest.mark.parametrize("planted", ["another user's", "group-writable", "a link"])
def test_embed_and_ensure_refuse_a_planted_endpoint_file(planted, tmp_path, demo_models, request):
    """A file planted where the workflow looks for its endpoint: nothing is sent, written or started."""
    endpoint = tmp_path / "gpu0.json"
    if planted == "another user's":
        if os.geteuid() != 0:
            pytest.skip("making a file of another user needs root (CI runs as root)")
        server = request.getfixturevalue("other_users_sidecar")  # its real, live endpoint file
        shutil.copy(server["endpoint_file"], endpoint)
        write_endpoint(endpoint, json.loads(endpoint.read_text()), owner=OTHER)
        expected = "uid 65534"
    elif planted == "group-writable":
        write_endpoint(endpoint, mode=0o664)
        expected = "chmod go-w"
    else:
        (tmp_path / "elsewhere.json").write_text(json.dumps(endpoint_info()))
        endpoint.symlink_to(tmp_path / "elsewhere.json")
        expected = "symbolic link"
    before = footprint(endpoint)
    serve = ["--esm2", demo_models / "esm2_t2_demo.pt", "--dnabert-s", demo_models / "dnabert_s_demo",
             "--threads", "1"]
    for command in (["embed", *fasta_inputs(tmp_path)], ["embed", *fasta_inputs(tmp_path), "--ensure", *serve],
                    ["ensure", *serve]):
        proc = sidecar_cli(command[0], "--endpoint-file", endpoint, *command[1:])
        assert_refused(proc, f"sidecar {command[0]}: ", str(endpoint), expected)
    assert not (tmp_path / "out").exists()
    assert footprint(endpoint) == before
    assert not (tmp_path / "gpu0.json.log").exists()  # no sidecar was started


@pytest.mark.process
def test_serve_refuses_a_linked_log_and_leaves_its_target_alone(tmp_path, demo_models):
    target = tmp_path / "victim.txt"
    target.write_text("the victim's own file\n")
    (tmp_path / "server.log").symlink_to(target)
    proc = sidecar_cli("serve", "--endpoint-file", tmp_path / "ep.json", "--log", tmp_path / "server.log",
                       "--esm2", demo_models / "esm2_t2_demo.pt")
    assert_refused(proc, "log file", str(tmp_path / "server.log"), "symbolic link")
    assert target.read_text() == "the victim's own file\n" and not (tmp_path / "ep.json").exists()


@pytest.mark.process
def test_ensure_refuses_a_linked_lock_and_does_not_create_its_target(tmp_path, demo_models):
    target = tmp_path / "created_by_the_lock"
    (tmp_path / "ep.json.lock").symlink_to(target)
    proc = sidecar_cli("ensure", "--endpoint-file", tmp_path / "ep.json", "--esm2", demo_models / "esm2_t2_demo.pt")
    assert_refused(proc, "lock file", "symbolic link")
    assert not target.exists() and not (tmp_path / "ep.json").exists()


@pytest.mark.process
def test_a_copied_endpoint_of_another_users_server_is_refused(other_users_sidecar, tmp_path):
    """Even through an endpoint file of our own, the client will not talk to a socket another user made."""
    endpoint = write_endpoint(tmp_path / "ep.json", other_users_sidecar["info"])
    socket_dir = Path(other_users_sidecar["info"]["endpoint"][len("ipc://"):]).parent
    with pytest.raises(SidecarNotOurs) as caught:
        SidecarClient(endpoint).connect()
    message = one_line(caught.value)
    assert f"socket directory {socket_dir} is owned by" in message and "uid 65534" in message
    assert f"do not use the endpoint file {endpoint}" in message
    proc = sidecar_cli("embed", "--endpoint-file", endpoint, *fasta_inputs(tmp_path))
    assert_refused(proc, "uid 65534", str(socket_dir))
    models = other_users_sidecar["models"]
    proc = sidecar_cli("ensure", "--endpoint-file", endpoint, "--esm2", models / "esm2_t2_demo.pt")
    assert_refused(proc, "uid 65534")
    assert json.loads(endpoint.read_text()) == other_users_sidecar["info"]  # not replaced either
    assert not (tmp_path / "out").exists()
