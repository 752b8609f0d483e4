"""`virnucflow fetch-models` against a local HTTP server on 127.0.0.1: layout, checksums, resume, once only.

The server serves small generated files with Range support. It can cut a transfer short, answer
404, redirect the way the Hugging Face hub does (X-Repo-Commit, X-Linked-Etag on the redirect),
and it records every request. Nothing here contacts the internet.
"""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import run_cli
from virnucflow import fetch
from virnucflow.fingerprint import ORIGINAL_CLASSIFIER_BLOBS

pytestmark = pytest.mark.process

COMMIT = "1234567890abcdef1234567890abcdef12345678"


def blob(n, seed):
    return bytes((i * 7 + seed * 13 + (i >> 8)) % 251 for i in range(n))


class Server:
    """files: URL path -> bytes. cut: path -> bytes to send before dropping the connection (once each)."""

    def __init__(self):
        self.files, self.cut, self.headers, self.redirects = {}, {}, {}, {}
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    for name, value in server.headers.get(self.path, {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                for name, value in server.headers.get(self.path, {}).items():
                    self.send_header(name, value)
                self.end_headers()
                body = data[start:]
                cut = server.cut.pop(self.path, None)
                self.wfile.write(body if cut is None else body[:cut])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


ESM = blob(300_000, 1)
DNABERT = {
    "config.json": b'{"hidden_size": 8}\n',
    "pytorch_model.bin": blob(50_000, 2),
    "tokenizer.json": b'{"model": {}}\n',
    "tokenizer_config.json": b"{}\n",
    "special_tokens_map.json": b"{}\n",
}


@pytest.fixture
def server():
    with Server() as srv:
        srv.files["/esm/esm2_t36_3B_UR50D.pt"] = ESM
        repo = "/hf/zhihan1996/DNABERT-S/resolve"
        for name, data in DNABERT.items():
            for rev in ("main", COMMIT):
                srv.files[f"{repo}/{rev}/{name}"] = data
        # the weights are served like the hub's LFS files: a redirect carrying the commit and sha256
        for rev in ("main", COMMIT):
            srv.redirects[f"{repo}/{rev}/pytorch_model.bin"] = f"{srv.url}/cdn/pytorch_model.bin"
            srv.headers[f"{repo}/{rev}/pytorch_model.bin"] = {
                "X-Repo-Commit": COMMIT, "X-Linked-Etag": f'"{hashlib.sha256(DNABERT["pytorch_model.bin"]).hexdigest()}"'}
        srv.files["/cdn/pytorch_model.bin"] = DNABERT["pytorch_model.bin"]
        yield srv


def cli(server, dest, *extra, only=("esm2", "dnabert_s")):
    return run_cli(
        "fetch-models", "--dest", str(dest), "--only", *only,
        "--esm-base-url", f"{server.url}/esm", "--hf-base-url", f"{server.url}/hf",
        "--classifier-base-url", f"{server.url}/gh", *extra, check=False, timeout=120,
    )


def one_error_line(proc):
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def leftovers(dest):
    return sorted(str(p.relative_to(dest)) for p in Path(dest).rglob("*") if p.name.endswith((".part", ".tmp")))


def test_fetch_lays_out_the_models_verifies_and_pins_then_fetches_nothing_twice(server, tmp_path):
    dest = tmp_path / "models"
    proc = cli(server, dest)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "torch/hub/checkpoints/esm2_t36_3B_UR50D.pt").read_bytes() == ESM
    for name, data in DNABERT.items():
        assert (dest / "dnabert_s" / name).read_bytes() == data
    assert not (dest / "dnabert_s/model.safetensors").exists()  # 404: fell back to pytorch_model.bin
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["dnabert_s"]["revision"] == COMMIT
    entry = manifest["files"]["torch/hub/checkpoints/esm2_t36_3B_UR50D.pt"]
    assert entry["sha256"] == hashlib.sha256(ESM).hexdigest() and entry["size"] == len(ESM)
    assert "X-Linked-Etag" in manifest["files"]["dnabert_s/pytorch_model.bin"]["verified_by"]
    # 'main' was resolved to the commit at the weights; the files after them were fetched at that commit
    dnabert_paths = [p for p, _ in server.requests if "/resolve/" in p]
    after = dnabert_paths[dnabert_paths.index("/hf/zhihan1996/DNABERT-S/resolve/main/pytorch_model.bin") + 1:]
    assert after and all(f"/resolve/{COMMIT}/" in p for p in after)
    assert f"esm2: {dest}/torch/hub/checkpoints/esm2_t36_3B_UR50D.pt" in proc.stdout

    server.requests.clear()
    manifest_bytes = (dest / "manifest.json").read_bytes()
    again = cli(server, dest)
    assert again.returncode == 0, again.stderr
    assert server.requests == []
    assert (dest / "manifest.json").read_bytes() == manifest_bytes
    assert "0 file(s) fetched (0 bytes downloaded), 6 already present and verified" in again.stderr
    assert leftovers(dest) == []


def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    dest = tmp_path / "models"
    server.cut["/esm/esm2_t36_3B_UR50D.pt"] = 100_000
    first = cli(server, dest, "--retries", "1", only=("esm2",))
    assert first.returncode != 0
    line = one_error_line(first)
    assert "100000 bytes kept" in line and "rerun to resume" in line
    assert not (dest / "torch/hub/checkpoints/esm2_t36_3B_UR50D.pt").exists()
    assert (dest / "torch/hub/checkpoints/esm2_t36_3B_UR50D.pt.part").stat().st_size == 100_000

    server.requests.clear()
    second = cli(server, dest, only=("esm2",))
    assert second.returncode == 0, second.stderr
    assert server.requests == [("/esm/esm2_t36_3B_UR50D.pt", "bytes=100000-")]
    assert (dest / "torch/hub/checkpoints/esm2_t36_3B_UR50D.pt").read_bytes() == ESM
    assert "resuming at byte 100000" in second.stderr
    assert leftovers(dest) == []


def test_a_cut_connection_is_retried_within_one_run(server, tmp_path):
    server.cut["/esm/esm2_t36_3B_UR50D.pt"] = 123_456
    summary = fetch.fetch_models(tmp_path, fetch.default_items(["esm2"], esm_base_url=f"{server.url}/esm"),
                                 retries=3, backoff=0)
    assert summary.fetched == ["torch/hub/checkpoints/esm2_t36_3B_UR50D.pt"]
    assert [r for _, r in server.requests] == [None, "bytes=123456-"]
    assert (tmp_path / "torch/hub/checkpoints/esm2_t36_3B_UR50D.pt").read_bytes() == ESM


def test_a_classifier_that_is_not_the_original_is_an_error_and_nothing_is_kept(server, tmp_path):
    dest = tmp_path / "models"
    server.files["/gh/300_model.pth"] = blob(5000, 3)  # not the original's blob
    server.files["/gh/500_model.pth"] = blob(5000, 4)
    proc = cli(server, dest, only=("classifiers",))
    assert proc.returncode != 0
    line = one_error_line(proc)
    assert "300_model.pth: checksum mismatch: git blob sha1" in line
    assert ORIGINAL_CLASSIFIER_BLOBS["300_model.pth"] in line and "nothing was kept" in line
    assert not (dest / "300_model.pth").exists()
    assert leftovers(dest) == []


def test_classifiers_are_verified_by_their_git_blob_id(server, tmp_path):
    data = blob(7000, 5)
    server.files["/gh/300_model.pth"] = data
    sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    item = fetch.Item("classifiers", [fetch.Choice("300_model.pth", f"{server.url}/gh/300_model.pth", sha1)])
    fetch.fetch_models(tmp_path, [item])
    entry = json.loads((tmp_path / "manifest.json").read_text())["files"]["300_model.pth"]
    assert entry["git_blob_sha1"] == sha1 and "git blob" in entry["verified_by"]


def test_a_corrupted_local_file_is_fetched_again(server, tmp_path):
    dest = tmp_path / "models"
    assert cli(server, dest).returncode == 0
    (dest / "dnabert_s/tokenizer.json").write_bytes(b"garbage")
    server.requests.clear()
    proc = cli(server, dest)
    assert proc.returncode == 0, proc.stderr
    assert "dnabert_s/tokenizer.json: checksum mismatch" in proc.stderr and "fetching it again" in proc.stderr
    assert [p for p, _ in server.requests] == [f"/hf/zhihan1996/DNABERT-S/resolve/{COMMIT}/tokenizer.json"]
    assert (dest / "dnabert_s/tokenizer.json").read_bytes() == DNABERT["tokenizer.json"]


def test_a_download_that_differs_from_the_manifest_is_refused(server, tmp_path):
    dest = tmp_path / "models"
    assert cli(server, dest, only=("esm2",)).returncode == 0
    (dest / "torch/hub/checkpoints/esm2_t36_3B_UR50D.pt").unlink()
    server.files["/esm/esm2_t36_3B_UR50D.pt"] = ESM[:-1] + b"\x00"  # same size, other bytes
    proc = cli(server, dest, only=("esm2",))
    assert proc.returncode != 0
    line = one_error_line(proc)
    assert "checksum mismatch: sha256" in line and "manifest.json" in line
    assert not (dest / "torch/hub/checkpoints/esm2_t36_3B_UR50D.pt").exists()
    assert leftovers(dest) == []


def test_a_hub_sha256_mismatch_is_an_error(server, tmp_path):
    server.files["/cdn/pytorch_model.bin"] = blob(50_000, 9)
    proc = cli(server, tmp_path / "models", only=("dnabert_s",))
    assert proc.returncode != 0
    assert "checksum mismatch: sha256" in one_error_line(proc) and "X-Linked-Etag" in proc.stderr
    assert leftovers(tmp_path / "models") == []
    assert not (tmp_path / "models/dnabert_s/pytorch_model.bin").exists()


def test_missing_files_and_unreachable_servers_are_one_line_errors(server, tmp_path):
    proc = cli(server, tmp_path / "m", "--esm-base-url", f"{server.url}/nothing-here", only=("esm2",))
    assert proc.returncode != 0 and "HTTP 404" in one_error_line(proc)
    closed = run_cli("fetch-models", "--dest", str(tmp_path / "m2"), "--only", "esm2", "--retries", "1",
                     "--esm-base-url", "http://127.0.0.1:9/esm", check=False, timeout=60)
    assert closed.returncode != 0 and "download failed after 1 attempt(s)" in one_error_line(closed)


def test_files_put_in_place_by_hand_are_recorded_not_fetched(server, tmp_path):
    target = tmp_path / "torch/hub/checkpoints/esm2_t36_3B_UR50D.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(ESM)
    summary = fetch.fetch_models(tmp_path, fetch.default_items(["esm2"], esm_base_url=f"{server.url}/esm"))
    assert summary.reused == [fetch.ESM2_PATH] and server.requests == []
    entry = json.loads((tmp_path / "manifest.json").read_text())["files"][fetch.ESM2_PATH]
    assert entry["sha256"] == hashlib.sha256(ESM).hexdigest() and entry["verified_by"] == "recorded when found in place"


def test_another_pinned_revision_replaces_the_dnabert_files(server, tmp_path):
    dest = tmp_path / "models"
    assert cli(server, dest, only=("dnabert_s",)).returncode == 0
    other = "fedcba9876543210fedcba9876543210fedcba98"
    repo = "/hf/zhihan1996/DNABERT-S/resolve"
    for name, data in DNABERT.items():
        server.files[f"{repo}/{other}/{name}"] = data.replace(b"{}", b'{"v": 2}')
    server.redirects[f"{repo}/{other}/pytorch_model.bin"] = f"{server.url}/cdn/pytorch_model.bin"
    server.headers[f"{repo}/{other}/pytorch_model.bin"] = {"X-Repo-Commit": other}
    (dest / "dnabert_s/tokenizer.json.part").write_bytes(b"stale bytes of the old revision")
    proc = cli(server, dest, "--dnabert-revision", other, only=("dnabert_s",))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((dest / "manifest.json").read_text())["dnabert_s"]["revision"] == other
    for name, data in DNABERT.items():
        assert (dest / "dnabert_s" / name).read_bytes() == data.replace(b"{}", b'{"v": 2}'), name
    assert leftovers(dest) == []
