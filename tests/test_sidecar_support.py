"""Shared fixtures of the sidecar tests (no tests here): tiny real models, `sidecar serve` child processes,
sequence pools and their in-process reference vectors, raw sockets."""

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from sidecar import protocol
from sidecar.client import SidecarClient

REPO = Path(__file__).resolve().parents[1]


# ---- fixtures and helpers ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from virnucflow.models.dnabert_s import load_dnabert_s, write_tiny_dnabert_s
    from virnucflow.models.esm2 import load_esm2, write_tiny_esm2_checkpoint

    root = tmp_path_factory.mktemp("sidecar_models")
    esm2 = write_tiny_esm2_checkpoint(root / "esm2_tiny.pt", seed=1)
    dnabert = write_tiny_dnabert_s(root / "dnabert_s", seed=1)
    return {"esm2_path": str(esm2), "dnabert_path": str(dnabert),
            "esm2": load_esm2(str(esm2)), "dnabert_s": load_dnabert_s(str(dnabert))}


def model_args(models, which=("esm2", "dnabert_s")):
    args = []
    if "esm2" in which:
        args += ["--esm2", models["esm2_path"]]
    if "dnabert_s" in which:
        args += ["--dnabert-s", models["dnabert_path"]]
    return args


class Sidecar:
    """A `sidecar serve` child process and its endpoint file."""

    def __init__(self, directory, args, name="sidecar.json", wait_file=True):
        self.endpoint_file = Path(directory) / name
        self.log = Path(directory) / f"{name}.log"
        command = [sys.executable, "-m", "sidecar", "serve", "--endpoint-file", str(self.endpoint_file),
                   "--threads", "1", "--log", str(self.log), *args]
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        if wait_file:
            self.wait_file()

    def wait_file(self, timeout=15):
        deadline = time.monotonic() + timeout
        while not self.endpoint_file.exists():
            assert self.proc.poll() is None, f"sidecar exited early: {self.proc.stdout.read()}"
            assert time.monotonic() < deadline, "no endpoint file"
            time.sleep(0.01)
        return json.loads(self.endpoint_file.read_text())

    def client(self, **kwargs):
        return SidecarClient(self.endpoint_file, **kwargs)

    def wait_ready(self):
        with self.client(ready_timeout=60) as client:
            return client.wait_ready()

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"sidecar still running after {timeout} s; log:\n{self.log.read_text()}")

    def close(self):
        """Stop it gracefully (so it removes its socket directory); kill it only if that fails."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def spawn(tmp_path):
    started = []

    def start(*args, **kwargs):
        sidecar = Sidecar(tmp_path, [str(a) for a in args], **kwargs)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.close()


def pools(seed=0, n=40):
    rng = random.Random(seed)
    proteins = ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(5, 40))) for _ in range(n)]
    dna = ["".join(rng.choice("ACGT") for _ in range(rng.randint(20, 120))) for _ in range(n)]
    return {"esm2": proteins, "dnabert_s": dna}


@pytest.fixture(scope="module")
def reference(models):
    """In-process vectors of every pool sequence: the models' own embed, one call per sequence (what a request
    of that one sequence gets; exact ESM-2 vectors of a larger request depend on its batch mates)."""
    return {model: np.stack([models[model].embed([s])[0] for s in seqs]) for model, seqs in pools().items()}


def raw_dealer(endpoint):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def recv_header(sock, timeout=10.0):
    assert sock.poll(timeout * 1000), "no reply"
    frames = sock.recv_multipart()
    return protocol.decode_header(frames[0]), frames[1:]


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
