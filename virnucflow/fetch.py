"""Fetch the real models once into one directory, so that every job runs offline afterwards.

Layout under DEST (what the loaders read):
    torch/hub/checkpoints/esm2_t36_3B_UR50D.pt   ESM-2 3B (fair-esm's file; TORCH_HOME=DEST/torch also works)
    dnabert_s/                                    DNABERT-S at one hub commit: config.json, model.safetensors
                                                  (or pytorch_model.bin), tokenizer files
    300_model.pth, 500_model.pth                  the original's classifiers
    manifest.json                                 url, size, sha256 and git blob sha1 of every file

- Checksums: the classifiers must have the git blob ids in virnucflow.fingerprint's
  ORIGINAL_CLASSIFIER_BLOBS. A hub file served with a sha256 (X-Linked-Etag) must match it. Every
  other file's sha256 is recorded in the manifest at its first download and checked on reuse.
- Resumable: bytes go to `<file>.part`; an interrupted transfer continues with an HTTP Range
  request, in this run (--retries) or the next.
- Once: a present file that matches its checksums is not fetched again; one that does not is
  fetched again. A download that fails its check is deleted (the .part too) with a one-line error.
- The DNABERT-S revision: a commit, or a branch such as `main` that is resolved to the commit the
  hub reports (X-Repo-Commit) at the first file; the manifest pins it for every later fetch.

Only the standard library's urllib is used: one dependency fewer on the machines that fetch.
"""

import contextlib
import email.message
import fcntl
import hashlib
import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from virnucflow.atomic import atomic_path
from virnucflow.errors import InputError
from virnucflow.fingerprint import ORIGINAL_CLASSIFIER_BLOBS

log = logging.getLogger("virnucflow.fetch")

ESM2_NAME = "esm2_t36_3B_UR50D"
ESM2_PATH = f"torch/hub/checkpoints/{ESM2_NAME}.pt"
DNABERT_REPO = "zhihan1996/DNABERT-S"
DNABERT_DIR = "dnabert_s"
VIRNUCPRO_COMMIT = "0b7e6f1f1c5972ce30aa1ced5977890406d3efe2"
DEFAULT_ESM_BASE_URL = "https://dl.fbaipublicfiles.com/fair-esm/models"
DEFAULT_HF_BASE_URL = "https://huggingface.co"
DEFAULT_CLASSIFIER_BASE_URL = f"https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/{VIRNUCPRO_COMMIT}"
# Each entry: the files that may hold it, tried in order (a 404 moves on to the next).
DNABERT_FILES = (
    ("config.json",),
    ("model.safetensors", "pytorch_model.bin"),
    ("tokenizer.json",),
    ("tokenizer_config.json",),
    ("special_tokens_map.json",),
)
GROUPS = ("esm2", "dnabert_s", "classifiers")
MANIFEST_NAME = "manifest.json"
BLOCK = 1 << 20
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FetchError(InputError):
    """A download that cannot be completed or verified (one line for the user)."""


class NotFound(FetchError):
    pass


@dataclass
class Choice:
    path: str  # relative to DEST
    url: str  # may hold {revision}
    git_blob_sha1: str | None = None


@dataclass
class Item:
    group: str
    choices: list  # of Choice: the first that the server has is fetched
    hub_revision: bool = False  # url holds {revision}, resolved and pinned through the manifest


@dataclass
class Summary:
    fetched: list = field(default_factory=list)
    reused: list = field(default_factory=list)
    downloaded_bytes: int = 0


def default_items(groups=GROUPS, esm_base_url=DEFAULT_ESM_BASE_URL, hf_base_url=DEFAULT_HF_BASE_URL,
                  classifier_base_url=DEFAULT_CLASSIFIER_BASE_URL):
    """The files of the real models, from their original sources (or mirrors with the same layout)."""
    items = []
    if "esm2" in groups:
        items.append(Item("esm2", [Choice(ESM2_PATH, f"{esm_base_url.rstrip('/')}/{ESM2_NAME}.pt")]))
    if "dnabert_s" in groups:
        base = f"{hf_base_url.rstrip('/')}/{DNABERT_REPO}/resolve/{{revision}}"
        for names in DNABERT_FILES:
            items.append(Item("dnabert_s", [Choice(f"{DNABERT_DIR}/{n}", f"{base}/{n}") for n in names], hub_revision=True))
    if "classifiers" in groups:
        for name, blob in ORIGINAL_CLASSIFIER_BLOBS.items():
            items.append(Item("classifiers", [Choice(name, f"{classifier_base_url.rstrip('/')}/{name}", blob)]))
    return items


def file_digests(path):
    """(size, sha256, git blob sha1) of a file, in one read."""
    path = Path(path)
    size = path.stat().st_size
    sha256, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            sha256.update(block)
            blob.update(block)
    return {"size": size, "sha256": sha256.hexdigest(), "git_blob_sha1": blob.hexdigest()}


def _header(trail, name):
    """The last value of a header over a redirect chain (newest response last)."""
    for headers in reversed(trail):
        value = headers.get(name)
        if value:
            return value.strip()
    return None


def _linked_sha256(trail):
    value = _header(trail, "X-Linked-Etag")
    value = value.removeprefix("W/").strip('"').lower() if value else None
    return value if value and _SHA256.match(value) else None


def _content_range(headers):
    """(start, total) from `Content-Range: bytes a-b/N` or `bytes */N`."""
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", headers.get("Content-Range") or "")
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


class _HeaderTrail(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of every redirect response: the hub puts X-Repo-Commit and X-Linked-Etag there."""

    def __init__(self):
        self.trail = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.trail.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


class Fetcher:
    def __init__(self, dest, retries=5, timeout=60.0, backoff=2.0):
        self.dest = Path(dest)
        self.retries, self.timeout, self.backoff = max(1, retries), timeout, backoff
        self.manifest_path = self.dest / MANIFEST_NAME
        self.manifest = self._read_manifest()
        self.summary = Summary()

    # ---- manifest ---------------------------------------------------------------------------

    def _read_manifest(self):
        if not self.manifest_path.is_file():
            return {"files": {}, "dnabert_s": {}}
        try:
            data = json.loads(self.manifest_path.read_text())
            if not isinstance(data.get("files"), dict):
                raise ValueError("no 'files' table")
        except (ValueError, AttributeError) as exc:
            raise FetchError(f"{self.manifest_path}: unreadable ({exc}); delete it to record the checksums again") from None
        data.setdefault("dnabert_s", {})
        return data

    def _write_manifest(self):
        with atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")

    # ---- verification -----------------------------------------------------------------------

    def _verify(self, choice, path, hub_sha256=None):
        """Digests of `path`, or a FetchError naming what does not match."""
        digests = file_digests(path)
        expected = []
        if choice.git_blob_sha1:
            expected.append(("git blob sha1", digests["git_blob_sha1"], choice.git_blob_sha1, "the original's git blob id"))
        recorded = self.manifest["files"].get(choice.path)
        if recorded:
            expected.append(("sha256", digests["sha256"], recorded.get("sha256"), f"{MANIFEST_NAME}"))
        if hub_sha256:
            expected.append(("sha256", digests["sha256"], hub_sha256, "the hub's X-Linked-Etag"))
        for kind, got, want, source in expected:
            if want and got != want:
                hint = " (if the file changed upstream on purpose, delete its entry there)" if source == MANIFEST_NAME else ""
                raise FetchError(f"{self.dest / choice.path}: checksum mismatch: {kind} is {got}, {source}{hint} says {want}")
        digests["verified_by"] = ", ".join(sorted({source for *_, source in expected})) or "recorded at first download"
        return digests

    # ---- transfer ---------------------------------------------------------------------------

    def _open(self, url, have):
        headers = {"User-Agent": "virnucflow-fetch-models"}
        if have:
            headers["Range"] = f"bytes={have}-"
        trail = _HeaderTrail()
        response = urllib.request.build_opener(trail).open(urllib.request.Request(url, headers=headers), timeout=self.timeout)
        return response, trail.trail

    def _download(self, url, part, label):
        """Fill `part` from `url`, resuming what it holds; returns the response headers (redirects first)."""
        reason = None
        for attempt in range(1, self.retries + 1):
            have = part.stat().st_size if part.exists() else 0
            try:
                response, trail = self._open(url, have)
            except urllib.error.HTTPError as exc:
                start, total = _content_range(exc.headers or email.message.Message())
                exc.close()
                if exc.code == 416 and have and total == have:
                    return [exc.headers]  # the .part already holds the whole file
                if exc.code == 416:
                    part.unlink(missing_ok=True)
                    reason = "the server refused the range"
                    continue
                if exc.code == 404:
                    raise NotFound(f"{url}: HTTP 404 Not Found; check the base URL and the revision") from None
                if exc.code in (408, 429) or exc.code >= 500:
                    reason = f"HTTP {exc.code} {exc.reason}"
                    self._wait(label, attempt, have, reason)
                    continue
                raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL and the revision") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
                self._wait(label, attempt, have, reason)
                continue
            with response:
                trail = trail + [response.headers]
                total = None
                if have and response.status == 206:
                    start, total = _content_range(response.headers)
                    if start != have:
                        part.unlink(missing_ok=True)
                        reason = f"the server resumed at byte {start}, not {have}"
                        continue
                    mode = "ab"
                    log.info("%s: resuming at byte %d", label, have)
                else:
                    if have:
                        log.info("%s: the server ignored the range request; starting again", label)
                    have, mode = 0, "wb"
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                try:
                    self._copy(response, part, mode, have, total, label)
                except (OSError, http.client.HTTPException) as exc:
                    reason = str(exc) or type(exc).__name__
                    self._wait(label, attempt, part.stat().st_size if part.exists() else 0, reason)
                    continue
                size = part.stat().st_size
                if total is not None and size < total:
                    reason = f"the connection closed at byte {size} of {total}"
                    self._wait(label, attempt, size, reason)
                    continue
                if total is not None and size > total:
                    part.unlink()
                    raise FetchError(f"{url}: got {size} bytes, the server announced {total}; nothing was kept, rerun")
                return trail
        kept = part.stat().st_size if part.exists() else 0
        raise FetchError(
            f"{url}: download failed after {self.retries} attempt(s) ({reason}); {kept} bytes kept in {part}, rerun to resume"
        )

    def _wait(self, label, attempt, have, reason):
        if attempt < self.retries:
            log.warning("%s: interrupted at byte %d (%s); retrying (%d of %d)", label, have, reason, attempt + 1, self.retries)
            time.sleep(self.backoff * attempt)

    def _copy(self, response, part, mode, have, total, label):
        part.parent.mkdir(parents=True, exist_ok=True)
        done, started, last = have, time.monotonic(), time.monotonic()
        with open(part, mode) as fh:
            for block in iter(lambda: response.read(BLOCK), b""):
                fh.write(block)
                done += len(block)
                self.summary.downloaded_bytes += len(block)
                now = time.monotonic()
                if now - last >= 30:
                    rate = (done - have) / max(now - started, 1e-9)
                    of = f" of {_human(total)}" if total else ""
                    log.info("%s: %s%s (%s/s)", label, _human(done), of, _human(rate))
                    last = now

    # ---- one item ---------------------------------------------------------------------------

    def _revision(self, requested):
        pinned = self.manifest["dnabert_s"].get("revision")
        if pinned and (not _COMMIT.match(requested) or requested == pinned):
            return pinned
        return requested

    def _present(self, item):
        """The verified choice already in DEST, or None (a file that fails its check is removed)."""
        for choice in item.choices:
            path = self.dest / choice.path
            if not path.is_file():
                continue
            try:
                digests = self._verify(choice, path)
            except FetchError as exc:
                log.warning("%s; fetching it again", exc)
                path.unlink()
                continue
            if choice.path not in self.manifest["files"]:  # put there by hand: record what was found
                digests["verified_by"] = digests["verified_by"].replace("recorded at first download", "recorded when found in place")
                self._record(choice, digests, None)
            return choice
        return None

    def _record(self, choice, digests, url):
        entry = dict(digests, url=url)
        if self.manifest["files"].get(choice.path) != entry:
            self.manifest["files"][choice.path] = entry
            self._write_manifest()

    def fetch_item(self, item, revision):
        choice = self._present(item)
        if choice:
            self.summary.reused.append(choice.path)
            log.info("%s: present and verified; not fetched again", choice.path)
            return
        for choice in item.choices:
            url = choice.url.format(revision=revision["value"]) if item.hub_revision else choice.url
            target = self.dest / choice.path
            part = target.with_name(target.name + ".part")
            log.info("%s: fetching %s", choice.path, url)
            try:
                trail = self._download(url, part, choice.path)
            except NotFound:
                if choice is item.choices[-1]:
                    raise
                log.info("%s: not on the server; trying %s", choice.path, item.choices[-1].path)
                continue
            if item.hub_revision:
                commit = (_header(trail, "X-Repo-Commit") or "").lower()
                if _COMMIT.match(commit) and commit != revision["value"]:
                    if _COMMIT.match(revision["value"]):
                        part.unlink(missing_ok=True)
                        raise FetchError(f"{url}: the hub answered with commit {commit}, not the pinned {revision['value']}")
                    log.info("DNABERT-S revision %s is commit %s; pinned in %s", revision["value"], commit, MANIFEST_NAME)
                    revision["value"] = commit
            try:
                digests = self._verify(choice, part, _linked_sha256(trail))
            except FetchError as exc:
                part.unlink(missing_ok=True)
                raise FetchError(f"{exc}; the download from {url} was deleted, nothing was kept") from None
            part.replace(target)
            self._record(choice, digests, url)
            self.summary.fetched.append(choice.path)
            log.info("%s: %s fetched, %s", choice.path, _human(digests["size"]), digests["verified_by"])
            return

    # ---- all ---------------------------------------------------------------------------------

    def fetch(self, items, dnabert_revision="main"):
        revision = {"value": self._revision(dnabert_revision)}
        pinned = self.manifest["dnabert_s"].get("revision")
        if pinned and revision["value"] != pinned and any(i.hub_revision for i in items):
            log.info("DNABERT-S: revision %s asked, %s held; fetching it", revision["value"], pinned)
            for path in [p for p in self.manifest["files"] if p.startswith(f"{DNABERT_DIR}/")]:
                (self.dest / path).unlink(missing_ok=True)
                del self.manifest["files"][path]
            for part in (self.dest / DNABERT_DIR).glob("*.part"):  # bytes of the other revision
                part.unlink()
            self.manifest["dnabert_s"] = {}
            self._write_manifest()
        for item in items:
            self.fetch_item(item, revision)
        if any(i.hub_revision for i in items) and self.manifest["dnabert_s"].get("revision") != revision["value"]:
            self.manifest["dnabert_s"] = {"repo": DNABERT_REPO, "revision": revision["value"]}
            self._write_manifest()
        return self.summary


@contextlib.contextmanager
def _locked(dest):
    """One fetch per directory at a time: a second waits for the first."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / ".fetch-models.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another fetch-models is writing to %s; waiting for it", dest)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def fetch_models(dest, items, dnabert_revision="main", retries=5, timeout=60.0, backoff=2.0):
    """Fetch `items` into `dest` (see the module docstring); returns a Summary."""
    dest = Path(dest)
    with _locked(dest):
        return Fetcher(dest, retries=retries, timeout=timeout, backoff=backoff).fetch(items, dnabert_revision)


def config_snippet(dest):
    """The config lines that point the workflow at a fetched directory."""
    dest = Path(dest)
    return "\n".join([
        "models:",
        f"  esm2: {dest / ESM2_PATH}",
        f"  dnabert_s: {dest / DNABERT_DIR}",
        "  classifiers:",
        f"    \"300\": {dest / '300_model.pth'}",
        f"    \"500\": {dest / '500_model.pth'}",
    ])
