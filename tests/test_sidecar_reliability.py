"""Clients never hang and the server never silently drops a reply (the ZeroMQ guide's "Lazy Pirate").

Against real `sidecar serve` processes with the tiny models, and against a bare ZeroMQ ROUTER in this
process that plays a misbehaving sidecar (a real socket speaking the real protocol): a server that never
answers an embed, one that falls silent, one killed and restarted on the same TCP port mid-request, one
stopped mid-request, 5,000 pipelined requests on one socket, resent request ids, non-finite vectors.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from sidecar import protocol, rendezvous
from sidecar.client import ASSUMED_RATE, SidecarClient
from sidecar.replies import Outbox, Requests
from test_sidecar_support import REPO, Sidecar, model_args, pools, raw_dealer, recv_header, wait_until


# ---- helpers ----------------------------------------------------------------------------------

class BareRouter:
    """A ROUTER in a thread that answers pings as a ready esm2 sidecar (dim 4) and hands each embed to
    `on_embed(head)`, which returns the reply frames or None (no reply). Its endpoint file names this
    test process, which stays alive: the client cannot tell by pid that something is wrong."""

    def __init__(self, directory, on_embed, mute_after_embed=False):
        self.endpoint_file = Path(directory) / "bare.json"
        self.on_embed, self.mute_after_embed = on_embed, mute_after_embed
        self.embeds = []  # (identity, request id) of every embed received
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.ROUTER)
        self.sock.linger = 0
        endpoint = f"ipc://{directory}/bare.sock"
        self.sock.bind(endpoint)
        rendezvous.write(self.endpoint_file, {
            "protocol": protocol.PROTOCOL, "version": protocol.VERSION, "endpoint": endpoint, "pid": os.getpid(),
            "pid_start": rendezvous.start_ticks(os.getpid()), "host": rendezvous.hostname(), "auth": None})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        muted = False
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            identity, head_frame, *_ = self.sock.recv_multipart()
            head = protocol.decode_header(head_frame)
            if head["type"] == protocol.PING and not muted:
                self.sock.send_multipart([identity, *protocol.pong(
                    head["id"], protocol.READY, pid=os.getpid(), models={"esm2": {"dim": 4, "name": "bare"}})])
            elif head["type"] == protocol.EMBED:
                self.embeds.append((identity, head["id"]))
                muted = self.mute_after_embed
                reply = self.on_embed(head)
                if reply:
                    self.sock.send_multipart([identity, *reply])

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.context.term()


def cli_embed(endpoint_file, protein, out, *options):
    """Start `sidecar embed` on one protein file; returns the process."""
    return subprocess.Popen([sys.executable, "-m", "sidecar", "embed", "--endpoint-file", str(endpoint_file),
                             "--protein", str(protein), "--esm-out", str(out), *map(str, options)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_faa(path, seqs, prefix="p"):
    path.write_text("".join(f">{prefix}{i}\n{s}\n" for i, s in enumerate(seqs)))
    return path


def long_proteins(n, seed):
    """Distinct proteins long enough that the tiny ESM-2 needs a few seconds for them (no cache hits)."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=int(rng.integers(150, 250)))) for _ in range(n)]


# ---- pieces, in process ------------------------------------------------------------------------

@pytest.mark.unit
def test_request_timeout_is_base_plus_queued_work_over_rate_with_floor_and_cap(tmp_path):
    client = SidecarClient(tmp_path / "none.json", request_timeout=10, max_request_timeout=100)
    assert client.request_timeout_for(0) == 10  # the floor
    assert client.request_timeout_for(int(ASSUMED_RATE) * 5) == 15  # no measured rate yet
    client._note_load({"queue": {"requests": 3, "tokens": 4000}, "rate_tokens_per_s": 200.0})
    assert client.request_timeout_for(1000) == 10 + 5000 / 200
    assert client.request_timeout_for(10**9) == 100  # the cap


@pytest.mark.unit
def test_outbox_keeps_replies_for_a_full_pipe_in_order_and_drops_them_only_when_the_client_is_gone(caplog):
    context = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    router.sndhwm = dealer.rcvhwm = 5
    router.bind("inproc://outbox")
    dealer.connect("inproc://outbox")
    dealer.send(b"hello")
    identity, _ = router.recv_multipart()
    outbox, sent = Outbox(router), []
    for i in range(200):
        outbox.send(identity, [str(i).encode()], on_done=lambda i=i: sent.append(i))
    assert outbox.count > 150 and len(sent) < 50  # a plain ROUTER would have dropped these
    received = []
    while len(received) < 200:
        outbox.flush()
        while dealer.poll(10):
            received.append(int(dealer.recv()))
    assert received == list(range(200)) and sent == list(range(200)) and outbox.count == 0

    for i in range(50):
        outbox.send(identity, [b"late"], on_done=lambda i=i: sent.append(i))
    dealer.close(linger=0)
    # polling the ROUTER, as the server's loop does, lets it see the disconnect
    wait_until(lambda: router.poll(10) == 0 and outbox.flush() == 0, 5, "the outbox to notice the client is gone")
    assert len(sent) == 250 and outbox.count == 0  # each reply left (into the pipe, before the close) or was dropped
    assert 0 < outbox.dropped <= 50
    assert f"{outbox.dropped} reply(ies) to client {identity.hex()} dropped: the client is gone" in caplog.text
    router.close(linger=0)
    context.term()


@pytest.mark.unit
def test_recent_replies_are_bounded_by_bytes_and_matched_by_id_and_content():
    requests = Requests(max_bytes=100)
    key = Requests.key("r", "esm2", ["a"], ["MKV"])
    assert key == Requests.key("r", "esm2", ["a"], ["MKV"]) != Requests.key("r", "esm2", ["a"], ["MKL"])
    keys = [Requests.key(f"r{i}", "esm2", ["a"], ["MKV"]) for i in range(3)]
    for k in keys:
        requests.finish(k, [b"x" * 40])
    assert requests.find(keys[0]) == (None, None) and requests.bytes == 80  # the oldest went
    assert requests.find(keys[2]) == (None, [b"x" * 40])
    big = Requests.key("big", "esm2", ["a"], ["MKV"])
    requests.finish(big, [b"x" * 101])  # larger than the whole cache: not kept
    assert requests.find(big) == (None, None)


# ---- a misbehaving server (a bare ROUTER) --------------------------------------------------------

@pytest.mark.process
def test_a_server_that_never_answers_an_embed_fails_the_client_after_n_tries(tmp_path):
    router = BareRouter(tmp_path, on_embed=lambda head: None)
    try:
        faa = write_faa(tmp_path / "x.faa", ["MKV", "MLLA"])
        start = time.monotonic()
        proc = cli_embed(router.endpoint_file, faa, tmp_path / "out" / "B.npz",
                         "--request-timeout", 0.5, "--tries", 3, "--heartbeat", 0.1)
        _, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        router.close()
    assert proc.returncode == 1 and stderr.count("\n") == 1, stderr
    assert "did not answer a request within 0.5" in stderr and "tried 3 times" in stderr and "x.faa" in stderr
    assert 1.5 < elapsed < 8
    assert len(router.embeds) == 3
    assert len({request_id for _, request_id in router.embeds}) == 1  # the same request id every time
    assert len({identity for identity, _ in router.embeds}) == 3  # from a new socket every time
    assert not (tmp_path / "out").exists()


@pytest.mark.process
def test_a_server_that_falls_silent_on_this_host_is_given_up_on(tmp_path):
    router = BareRouter(tmp_path, on_embed=lambda head: None, mute_after_embed=True)
    try:
        faa = write_faa(tmp_path / "x.faa", ["MKV"])
        start = time.monotonic()
        proc = cli_embed(router.endpoint_file, faa, tmp_path / "B.npz",
                         "--silent-timeout", 0.5, "--tries", 2, "--heartbeat", 0.1)
        _, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        router.close()
    assert proc.returncode == 3 and stderr.count("\n") == 1, stderr  # 3: a fresh sidecar may do better
    assert "answered nothing for 0.5 s while embedding" in stderr and "tried 2 times" in stderr
    assert elapsed < 8 and len(router.embeds) == 2 and not (tmp_path / "B.npz").exists()


@pytest.mark.process
def test_non_finite_vectors_are_refused_naming_the_sequence_and_nothing_is_written(tmp_path):
    def nan_in_second_row(head):
        vectors = np.ones((len(head["ids"]), 4), dtype=np.float32)
        vectors[1, 2] = np.nan
        return protocol.result(head["id"], head["model"], head["ids"], vectors)

    router = BareRouter(tmp_path, on_embed=nan_in_second_row)
    try:
        faa = write_faa(tmp_path / "x.faa", ["MKV", "MLLA", "MQQ"])
        (tmp_path / "out").mkdir()
        proc = cli_embed(router.endpoint_file, faa, tmp_path / "out" / "B.npz")
        _, stderr = proc.communicate(timeout=30)
    finally:
        router.close()
    assert proc.returncode == 1 and stderr.count("\n") == 1, stderr
    assert "non-finite esm2 vector (NaN or infinity) for sequence 'p1'" in stderr
    assert list((tmp_path / "out").iterdir()) == []


# ---- a real server: duplicates and 5,000 pipelined requests ---------------------------------------

@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    sidecar = Sidecar(tmp_path_factory.mktemp("reliability"), [*model_args(models, ["esm2"]),
                                                               "--max-queued-requests", "6000"])
    sidecar.wait_ready()
    yield sidecar
    sidecar.close()


@pytest.mark.process
def test_5000_pipelined_requests_on_one_socket_all_get_their_reply(server):
    endpoint = server.wait_file()["endpoint"]
    pool = pools()["esm2"]
    with server.client() as client:
        before = client.status()["models"]["esm2"]["requests"]
    sock = raw_dealer(endpoint)
    sent = {}
    for i in range(5000):
        request_id = f"pipe{i}"
        sent[request_id] = i % len(pool)
        sock.send_multipart(protocol.embed("esm2", [f"s{i}"], [pool[i % len(pool)]], request_id=request_id))
    with server.client() as client:  # the socket above reads nothing yet: its pipe fills up
        wait_until(lambda: client.status()["models"]["esm2"]["requests"] >= before + 5000, 60,
                   "all 5000 requests computed")
        waiting = client.status()["queue"]["replies_waiting"]
    assert waiting > 0  # the pipe was full: these replies waited instead of being dropped
    vectors = {}
    while len(vectors) < 5000:
        head, data = recv_header(sock, timeout=20)
        assert head["type"] == "result" and head["id"] not in vectors, head
        vectors[head["id"]] = protocol.decode_result(head, data, [f"s{head['id'][4:]}"])[0]
    assert sock.poll(300) == 0  # and nothing twice
    for request_id, vector in vectors.items():
        assert np.array_equal(vector, vectors[f"pipe{sent[request_id]}"])  # same sequence, same vector
    with server.client() as client:
        queue = client.status()["queue"]
    assert queue["replies_waiting"] == 0 and queue["replies_dropped"] == 0 and queue["requests"] == 0
    assert queue["rate_tokens_per_s"] > 0


@pytest.mark.process
def test_a_resent_request_id_is_computed_once(server):
    endpoint = server.wait_file()["endpoint"]
    proteins = long_proteins(300, seed=3)
    ids = [f"q{i}" for i in range(len(proteins))]
    frames = protocol.embed("esm2", ids, proteins, request_id="again")
    with server.client() as client:
        before = client.status()["models"]["esm2"]["requests"]
    first, second, third = raw_dealer(endpoint), raw_dealer(endpoint), raw_dealer(endpoint)
    first.send_multipart(frames)
    # A client resends only after its first try: wait until the sidecar holds that try (ROUTER reads two
    # peers in no fixed order, so sending both at once could make `second` the original)
    with server.client() as client:
        wait_until(lambda: (lambda q: q["requests"] + q["admitting"])(client.status()["queue"]) > 0, 30,
                   "the first try to be accepted")
    second.send_multipart(frames)  # while the first is in flight, as a client that reconnected would
    head, data = recv_header(second, timeout=30)
    assert head["id"] == "again" and head["type"] == "result"
    vectors = protocol.decode_result(head, data, ids)
    assert first.poll(300) == 0  # the reply went to the newest socket only
    third.send_multipart(frames)  # after the reply: from the cache of recent replies
    head, data = recv_header(third)
    assert np.array_equal(protocol.decode_result(head, data, ids), vectors)
    third.send_multipart(protocol.embed("esm2", ["other"], ["MKV"], request_id="again"))
    head, data = recv_header(third)  # the same id with other content: another request
    assert head["type"] == "result" and protocol.decode_result(head, data, ["other"]).shape == (1, 32)
    with server.client() as client:
        assert client.status()["models"]["esm2"]["requests"] == before + 2
    log = server.log.read_text()
    assert "embed again sent again by client" in log and "answered from the reply cache" in log


# ---- a real server over TCP with CURVE: restarted, stopped ------------------------------------------

@pytest.mark.process
def test_a_server_killed_and_restarted_on_the_same_port_mid_request_still_answers(models, tmp_path):
    serve = [*model_args(models, ["esm2"]), "--secret-file", tmp_path / "secret.json"]
    first = Sidecar(tmp_path, [*map(str, serve), "--tcp", "0"])
    second = None
    proteins = long_proteins(800, seed=4)
    faa = write_faa(tmp_path / "x.faa", proteins)
    try:
        first.wait_ready()
        endpoint = first.wait_file()["endpoint"]
        embed = cli_embed(first.endpoint_file, faa, tmp_path / "out" / "B.npz", "--silent-timeout", 30)
        with first.client() as client:
            wait_until(lambda: client.status()["queue"]["requests"] > 0, 30, "the request to be accepted")
        first.proc.send_signal(signal.SIGSTOP)  # mid-request: it computes no more
        # The client is paused while the server is replaced, as if the restart were quicker than its look
        embed.send_signal(signal.SIGSTOP)
        first.proc.kill()
        first.proc.wait()
        second = Sidecar(tmp_path, [*map(str, serve), "--tcp", endpoint.rsplit(":", 1)[1]], wait_file=False)
        wait_until(lambda: first.endpoint_file.exists()
                   and rendezvous.read(first.endpoint_file)["pid"] == second.proc.pid, 30, "the new server")
        assert rendezvous.read(first.endpoint_file)["endpoint"] == endpoint
        embed.send_signal(signal.SIGCONT)
        _, stderr = embed.communicate(timeout=60)
    finally:
        for sidecar in (first, second):
            if sidecar is not None:
                sidecar.close()
    assert embed.returncode == 0, stderr
    from virnucflow.embedding_files import load_embeddings

    ids, vectors = load_embeddings(tmp_path / "out" / "B.npz")
    assert ids == [f"p{i}" for i in range(len(proteins))]
    assert np.allclose(vectors[::8], models["esm2"].embed(proteins[::8]), atol=1e-5)  # exact mode: row by row
    answered = [re.search(r" INFO embed (\S+) .* seqs=(\d+) ", line).groups() for line in
                second.log.read_text().splitlines()
                if f"sidecar[{second.proc.pid}] INFO embed " in line and line.endswith(" ok")]
    # the requests in flight were sent again, and each computed once (exact ESM-2 goes as one request per
    # batch of the original's, so there are many)
    assert answered and len({request for request, _ in answered}) == len(answered)
    assert sum(int(seqs) for _, seqs in answered) <= len(proteins)


@pytest.mark.process
def test_a_tcp_server_stopped_mid_request_then_killed_never_hangs_its_clients(models, tmp_path):
    sidecar = Sidecar(tmp_path, [*model_args(models, ["esm2"]), "--tcp", "0",
                                 "--secret-file", str(tmp_path / "secret.json")])
    faa = write_faa(tmp_path / "x.faa", long_proteins(800, seed=5))
    options = ("--silent-timeout", 1, "--tries", 2, "--heartbeat", 0.2)
    try:
        sidecar.wait_ready()
        silent = cli_embed(sidecar.endpoint_file, faa, tmp_path / "A" / "B.npz", *options)
        with sidecar.client() as client:
            wait_until(lambda: client.status()["queue"]["requests"] > 0, 30, "the request to be accepted")
        sidecar.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        _, stderr = silent.communicate(timeout=30)
        assert silent.returncode == 3 and stderr.count("\n") == 1, stderr
        assert "answered nothing for 1 s while embedding" in stderr and "tried 2 times" in stderr
        assert time.monotonic() - stopped < 6

        late = cli_embed(sidecar.endpoint_file, faa, tmp_path / "B" / "B.npz", *options)
        time.sleep(0.5)
        sidecar.proc.kill()  # the connection drops
        killed = time.monotonic()
        _, stderr = late.communicate(timeout=30)
        assert late.returncode == 3 and stderr.count("\n") == 1, stderr
        assert f"sidecar pid {sidecar.proc.pid}" in stderr and time.monotonic() - killed < 3
    finally:
        sidecar.close()
    assert not (tmp_path / "A").exists() and not (tmp_path / "B").exists()
