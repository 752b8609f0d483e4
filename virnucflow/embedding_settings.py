"""The embedding settings, defined once: models, numeric mode, device, batch budgets, timeouts, cache sizes.

`EmbeddingSettings` is the one typed object with the one set of defaults. Every way of embedding takes
its values from it: the workflow builds it from the config (`from_config`) and passes it on as command
line options (`to_args`); `sidecar serve`, `sidecar ensure`, `sidecar embed` and `virnucflow embed`
declare their options from it (`add_arguments`) and read them back (`from_namespace`). A field's
metadata says which commands take it (`scopes`) and where it lives in the config (`config`), so no
list of options is typed out anywhere else.

It imports no torch: Snakemake's parser and the torch-free embedding client import it. The client's
timeouts take their defaults from `sidecar.client.SidecarClient`, where they are documented.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.client import SidecarClient
from sidecar.protocol import LIMITS
from virnucflow.errors import InputError
from virnucflow.safe_load import TRUST_KEY, sha256_pin

MODES = ("exact", "fast")
DNABERT_PRECISIONS = ("fp16", "fp16-split", "fp32")  # virnucflow.models.mosaicbert_fast says what each is
# SidecarClient's own defaults for the settings that a client takes (its constructor documents them)
_CLIENT = {name: p.default for name, p in inspect.signature(SidecarClient).parameters.items()
           if name in ("ready_timeout", "request_timeout", "max_request_timeout", "tries", "heartbeat",
                       "silent_timeout")}
SERVE, CLIENT, IN_PROCESS = "serve", "client", "in_process"
MODEL_SCOPES = (SERVE, CLIENT, IN_PROCESS)  # a client checks that its sidecar serves these models


def _setting(default, help, config=None, scopes=(SERVE,), metavar=None, choices=None, kind=None, many=False):
    """A dataclass field with its command line help, config key ("section.key") and the commands taking it.
    `many`: a tuple of values, given as a list in the config and as a repeated option."""
    return field(default=default, metadata={"help": help, "config": config, "scopes": scopes, "many": many,
                                            "metavar": metavar, "choices": choices, "kind": kind})


@dataclass(frozen=True)
class EmbeddingSettings:
    esm2: str | None = _setting(None, "ESM-2 checkpoint file or fair-esm model name", "models.esm2",
                                MODEL_SCOPES, "SOURCE", kind=str)
    dnabert_s: str | None = _setting(None, "DNABERT-S directory or hub id", "models.dnabert_s", MODEL_SCOPES,
                                     "SOURCE", kind=str)
    dnabert_revision: str | None = _setting(None, "hub revision (commit) of DNABERT-S", "models.dnabert_s_revision",
                                            MODEL_SCOPES, "R", kind=str)
    cpu_sidecars: int = _setting(1, "how many sidecars the workflow starts when embedding.device is cpu (one per "
                                 "GPU otherwise); each part goes to the one that will finish it first",
                                 "embedding.cpu_sidecars", (), "N", kind=int)
    device: str = _setting("auto", "auto (the first GPU when there is one), cpu, cuda or cuda:N", "embedding.device",
                           (SERVE, IN_PROCESS), kind=str)
    mode: str = _setting("auto", "numerics: exact = fp32, the original's batches (ESM-2: of each part; DNABERT-S: one "
                         "sequence per forward), the original's numbers; fast = packed fp16 batches (cosine >= 0.999 "
                         "to exact); auto = fast on CUDA, exact on CPU",
                         "embedding.mode", (SERVE, CLIENT, IN_PROCESS), choices=("auto",) + MODES, kind=str)
    fast_dnabert_precision: str = _setting("fp16", "fast mode's DNABERT-S numerics: fp16 (LayerNorms and pooling in "
                                           "fp32), fp16-split (each weight as two fp16 halves, products and residual "
                                           "in fp32: twice the GEMM work) or fp32 (packed, TF32 off)",
                                           "embedding.fast_dnabert_precision", choices=DNABERT_PRECISIONS, kind=str)
    compile_cache_dir: str | None = _setting(None, "directory for fast mode's compiled kernels (torch.compile's "
                                             "cache), one subdirectory per model fingerprints, kept across runs "
                                             "and across the machines that share it; must be yours and not writable "
                                             "by others (default: torch's own, under /tmp of each machine)",
                                             "embedding.compile_cache_dir", metavar="DIR", kind=str)
    max_batch_tokens: int | None = _setting(None, "token budget of one compute batch, across requests "
                                            "(default 4096 in exact mode, 65536 in fast mode; exact ESM-2 computes "
                                            "each request alone, in the original's 2048-token batches)",
                                            "embedding.max_batch_tokens", metavar="N", kind=int)
    max_queued_tokens: int = _setting(4_000_000, "outstanding tokens beyond which requests are answered BUSY",
                                      "embedding.max_queued_tokens", metavar="N", kind=int)
    max_queued_requests: int = _setting(1024, "outstanding requests beyond which requests are answered BUSY",
                                        "embedding.max_queued_requests", metavar="N", kind=int)
    dedup_cache_mb: float = _setting(1024.0, "per model, MB of embeddings kept so that an identical sequence is "
                                     "embedded once per sidecar lifetime (LRU; 0 disables; never exact ESM-2, "
                                     "whose vectors depend on their batch)",
                                     "embedding.dedup_cache_mb", metavar="MB", kind=float)
    dedup_cache_entries: int | None = _setting(None, "per model, at most N cached embeddings (default: bounded by "
                                               "the MB only)", "embedding.dedup_cache_entries", metavar="N", kind=int)
    memory_fraction: float | None = _setting(None, "CUDA per-process memory fraction", "embedding.memory_fraction",
                                             metavar="X", kind=float)
    threads: int | None = _setting(None, "torch CPU threads (default: torch's choice)", None, metavar="N", kind=int)
    idle_timeout: float = _setting(3600.0, "exit after S seconds without requests (0 = never)",
                                   "embedding.idle_timeout", metavar="S", kind=float)
    drain_timeout: float = _setting(30.0, "on stop, seconds to finish queued work before rejecting it",
                                    "embedding.drain_timeout", metavar="S", kind=float)
    log_interval: float = _setting(30.0, "seconds between throughput log lines", None, metavar="S", kind=float)
    unsafe_trust_pickle: tuple = _setting((), "DANGEROUS: fully unpickle a model file that the safe loader refuses "
                                          "if its sha256 is this one; that runs any code the file carries. Only for "
                                          "a file you trust (repeatable)", TRUST_KEY, (SERVE, IN_PROCESS), "SHA256",
                                          kind=sha256_pin, many=True)
    max_seq_len_esm2: int = _setting(LIMITS.max_seq_len_esm2, "longest ESM-2 sequence a sidecar accepts, in "
                                     "residues; a longer one is refused at once (the workflow sends <= 167)",
                                     "embedding.max_seq_len_esm2", metavar="N", kind=int)
    max_seq_len_dnabert_s: int = _setting(LIMITS.max_seq_len_dnabert_s, "longest DNABERT-S sequence a sidecar "
                                          "accepts, in nucleotides; a longer one is refused at once (the workflow "
                                          "sends <= 501)", "embedding.max_seq_len_dnabert_s", metavar="N", kind=int)
    reply_cache_mb: float = _setting(256.0, "MB of recent results kept so that a client that resends a request "
                                     "after a timeout gets it without a second computation (0 disables)",
                                     "embedding.reply_cache_mb", metavar="MB", kind=float)
    # a client's patience (the ZeroMQ guide's "Lazy Pirate"); sidecar/client.py says how they combine
    ready_timeout: float = _setting(_CLIENT["ready_timeout"], "seconds to wait for the models to load, and for a "
                                    "busy sidecar to take a request", "embedding.ready_timeout", (CLIENT,), "S",
                                    kind=float)
    request_timeout: float = _setting(_CLIENT["request_timeout"], "seconds to wait for a request's reply before "
                                      "reconnecting and sending it again (the sidecar's queued work divided by its "
                                      "throughput is added)", "embedding.request_timeout", (CLIENT,), "S", kind=float)
    max_request_timeout: float = _setting(_CLIENT["max_request_timeout"], "the most seconds to wait for a "
                                          "request's reply, whatever the queue", "embedding.max_request_timeout",
                                          (CLIENT,), "S", kind=float)
    tries: int = _setting(_CLIENT["tries"], "sends of a request (reconnecting in between), and silent periods in a "
                          "row, before giving up", "embedding.tries", (CLIENT,), "N", kind=int)
    heartbeat: float = _setting(_CLIENT["heartbeat"], "seconds between liveness pings while waiting",
                                None, (CLIENT,), "S", kind=float)
    silent_timeout: float = _setting(_CLIENT["silent_timeout"], "seconds without any answer, pings included, after "
                                     "which the connection counts as lost", "embedding.silent_timeout", (CLIENT,),
                                     "S", kind=float)

    def limits(self):
        """The protocol limits of a sidecar with these sequence lengths; ValueError (one line) if unusable."""
        return dataclasses.replace(LIMITS, max_seq_len_esm2=self.max_seq_len_esm2,
                                   max_seq_len_dnabert_s=self.max_seq_len_dnabert_s).check()

    def client_options(self) -> dict:
        """The keyword arguments of SidecarClient that these settings give."""
        return {name: getattr(self, name) for name in _CLIENT}

    # ---- derived values -----------------------------------------------------------------------

    def resolved_mode(self, device: str) -> str:
        """The numeric mode on `device`: the configured one, or auto's choice (fast on CUDA, exact on CPU)."""
        if self.mode != "auto":
            return self.mode
        return "fast" if str(device).startswith("cuda") else "exact"

    def batch_tokens(self, mode: str) -> int:
        return self.max_batch_tokens or (65536 if mode == "fast" else 4096)

    def models(self) -> dict:
        """{protocol model name: (source, revision)} of the models that are set."""
        out = {}
        if self.esm2:
            out["esm2"] = (self.esm2, None)
        if self.dnabert_s:
            out["dnabert_s"] = (self.dnabert_s, self.dnabert_revision)
        return out

    def replace(self, **changes) -> "EmbeddingSettings":
        return dataclasses.replace(self, **changes)

    # ---- the config ---------------------------------------------------------------------------

    @classmethod
    def config_keys(cls, section: str) -> dict:
        """{key: field} of the settings that live in config section `section` ("models" or "embedding")."""
        out = {}
        for f in dataclasses.fields(cls):
            key = f.metadata["config"]
            if key and key.split(".")[0] == section:
                out[key.split(".", 1)[1]] = f
        return out

    @classmethod
    def from_config(cls, config: dict) -> "EmbeddingSettings":
        """The settings of a workflow config; a wrong type is one line that names the key."""
        values = {}
        for section in ("models", "embedding"):
            given = config.get(section) or {}
            for key, f in cls.config_keys(section).items():
                if given.get(key) is None:
                    continue
                values[f.name] = _convert(f, given[key], f"config: {section}.{key}")
        return cls(**values)

    # ---- command lines ------------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser, scopes, title: str | None = None):
        """Declare the options of the commands in `scopes` (one scope or several) on an argparse parser."""
        scopes = {scopes} if isinstance(scopes, str) else set(scopes)
        group = parser.add_argument_group(title or "embedding settings")
        group.add_argument("--settings-file", metavar="F", help="a JSON file of these settings (written by the "
                           "workflow); the options given here override its values")
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not scopes & set(meta["scopes"]):
                continue
            default = "" if f.default is None else f" (default {f.default:g})" if isinstance(f.default, float) \
                else f" (default {f.default})"
            if meta["many"]:
                default = ""
            group.add_argument(_flag(f), dest=f.name, default=None, metavar=meta["metavar"],
                               choices=meta["choices"], type=meta["kind"], help=meta["help"] + default,
                               action="append" if meta["many"] else "store")
        return group

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> "EmbeddingSettings":
        """The settings of a parsed command line: its --settings-file, overridden by the options given."""
        base = cls.read(ns.settings_file) if getattr(ns, "settings_file", None) else cls()
        values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)
                  if getattr(ns, f.name, None) is not None}
        return base.replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    # ---- the settings file --------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()},
                          indent=1, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path) -> "EmbeddingSettings":
        """Settings from a file written by `to_json`; a bad value is one line that names the file and key."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"settings file {path}: cannot read it ({exc.__class__.__name__}); rerun the workflow "
                             "to write it again") from None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields)) if isinstance(data, dict) else ["(not an object)"]
        if unknown:
            raise InputError(f"settings file {path}: unknown setting(s) {', '.join(unknown)}")
        return cls(**{k: None if v is None else _convert(fields[k], v, f"settings file {path}: {k}")
                      for k, v in data.items()})

    def to_args(self, scope: str) -> list[str]:
        """The options of the commands in `scope` whose values differ from the defaults."""
        args = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if scope in f.metadata["scopes"] and value is not None and value != f.default:
                for item in value if f.metadata["many"] else [value]:
                    args += [_flag(f), str(item)]
        return args


def _flag(f) -> str:
    return "--" + f.name.replace("_", "-")


def _convert(f, value, where):
    if not f.metadata["many"]:
        return _convert_one(f.metadata, value, where)
    if not isinstance(value, list):
        raise InputError(f"{where}: give a list, not {value!r}")
    return tuple(_convert_one(f.metadata, item, where) for item in value)


def _convert_one(meta, value, where):
    kind = meta["kind"]
    try:
        if kind is int and (isinstance(value, bool) or float(value) != int(value)):
            raise ValueError
        converted = kind(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        what = f"a {kind.__name__}" if isinstance(kind, type) else f"valid ({exc})"
        raise InputError(f"{where}: {value!r} is not {what}") from None
    if meta["choices"] and converted not in meta["choices"]:
        raise InputError(f"{where}: {value!r} is not one of {', '.join(meta['choices'])}")
    return converted
