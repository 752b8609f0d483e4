"""The whole workflow through `snakemake`, and a timeline of its stages: where the wall time goes.

One `snakemake --cores N` run in a fresh work directory, with a given config (`--config`, run as it is) or
one written here: the models of `--models-dir` (bench/real_models.py's files) or the demo's (`--demo`,
made by the workflow itself), on `--device`, and as input the FASTA files of `--fasta` (one sample each) or
`--frames` synthetic 500 bp frames over `--samples` samples, split into `--parts` parts.

While it runs, every sidecar of the run is asked for its status (`sidecar status`) every second; the last
answer of each gives its compute seconds. Afterwards the timeline is built from Snakemake's own job
records (.snakemake/metadata: every job's rule, start and end) and the sidecars' logs (start, READY):
- preparation: the first start to the last end of shard, prepare_shard, shard_frames, split_part,
  concatenate_shards and count_parts (the first parts are embedded while later shards are prepared);
- sidecar load: each sidecar's process start to READY (its log), and whether that overlapped preparation;
- embedding: the first embed job's start to the last one's end; each sidecar's busy fraction, its compute
  seconds over the time from READY to its last request;
- classification: merge, classify, run_info, contig_calls; the report's figures;
- tail: the last embed job's end to the run's end;
and the ratio of the wall time to the sidecars' compute time (their mean: the work was spread over them).
Every rule's own span is printed too. Times are seconds since snakemake started.

    python bench/e2e.py --models-dir /tmp/m --frames 32000 --parts 16 --cores 16 --out e2e.json   (GPU)
    python bench/e2e.py --demo --device cpu --frames 60 --parts 2 --cores 2 --out e2e.json         (CPU smoke)
    python bench/e2e.py --config my.yaml --cores 16 --out e2e.json
"""

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import workflow_gpus as wf  # noqa: E402 - the input, models, wrappers, snakemake run and log parsing

STAGES = {
    "preparation": ("shard", "prepare_shard", "shard_frames", "split_part", "concatenate_shards", "count_parts"),
    "embedding": ("embed",),
    "classification": ("merge", "classify_part", "classify", "run_info", "contig_calls"),
    "report": ("score_tracks", "report_plots"),
}


class StatusPoller:
    """Asks every sidecar endpoint file under <workdir>/.virnucflow/sidecar for its status every second."""

    def __init__(self, workdir, interval=1.0):
        self.dir, self.interval = Path(workdir) / ".virnucflow" / "sidecar", interval
        self.last = {}  # endpoint file name -> last status
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from sidecar.client import SidecarClient, SidecarError

        while not self.done.wait(self.interval):
            for f in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
                try:
                    with SidecarClient(f) as client:
                        self.last[f.stem] = dict(client.status(timeout=2.0), polled_t=time.time())
                except (SidecarError, OSError, ValueError):
                    continue

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def job_spans(workdir, since):
    """{rule: [(start, end)]} of the jobs of this run, from Snakemake's metadata (one record per output)."""
    jobs = {}
    for path in (Path(workdir) / ".snakemake" / "metadata").glob("*"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        start, end = record.get("starttime"), record.get("endtime")
        if start is None or end is None or start < since:
            continue
        key = (record.get("rule"), record.get("job_hash"), tuple(record.get("log") or ()))  # the job, not the file
        jobs[key] = (min(start, jobs.get(key, (start, end))[0]), max(end, jobs.get(key, (start, end))[1]))
    spans = {}
    for (rule, _, _), interval in jobs.items():
        spans.setdefault(rule, []).append(interval)
    return spans


def span(intervals):
    return (min(s for s, _ in intervals), max(e for _, e in intervals)) if intervals else None


def timeline(workdir, start, wall, statuses):
    """The stages, the sidecars and the ratios of one finished run (module docstring)."""
    spans = job_spans(workdir, start - 1)
    rel = lambda t: None if t is None else round(t - start, 2)  # noqa: E731
    stages = {}
    for stage, rules in STAGES.items():
        s = span([iv for r in rules for iv in spans.get(r, [])])
        stages[stage] = None if s is None else {"start": rel(s[0]), "end": rel(s[1]), "s": round(s[1] - s[0], 2)}
    embed = stages["embedding"]
    end = start + wall
    stages["tail"] = None if embed is None else {"start": embed["end"], "end": rel(end),
                                                 "s": round(rel(end) - embed["end"], 2)}
    sidecars = {}
    for log in sorted(Path(workdir).glob("logs/sidecar/*.server.log")):
        slot = log.name.split(".")[0]
        parsed = wf.parse_server_log(log)
        first_line = next((wf._epoch(m.group(1)) for line in log.read_text(errors="replace").splitlines()
                           if (m := wf.LOG_LINE.match(line))), None)
        status = statuses.get(slot, {})
        compute = sum((m.get("compute_s") or 0.0) for m in (status.get("models") or {}).values()) \
            if status else parsed["compute_s"]
        ready, last = parsed["ready_t"], parsed["last_t"]
        window = (last - ready) if ready and last and last > ready else None
        sidecars[slot] = {
            "device": status.get("device") or parsed["device"], "gpu_name": status.get("gpu_name"),
            "start": rel(first_line), "ready": rel(ready), "load_s": parsed["load_s"],
            "first_request": rel(parsed["first_t"]), "last_request": rel(last),
            "compute_s": round(compute, 2), "compute_from": "status" if status else "log",
            "busy_fraction": round(compute / window, 3) if window else None,
            "busy_fraction_of_wall": round(compute / wall, 3) if wall else None,
            "loads": parsed["loads"],
        }
    prep = stages["preparation"]
    for s in sidecars.values():
        s["load_overlaps_preparation_s"] = (round(max(0.0, min(s["ready"], prep["end"]) - max(s["start"],
                                            prep["start"])), 2) if prep and s["ready"] is not None
                                            and s["start"] is not None else None)
    mean_compute = sum(s["compute_s"] for s in sidecars.values()) / len(sidecars) if sidecars else 0.0
    return {
        "wall_s": round(wall, 2),
        "stages": stages,
        "sidecars": sidecars,
        "rules": {r: dict(zip(("start", "end"), map(rel, span(iv))), jobs=len(iv)) for r, iv in sorted(spans.items())},
        "compute_s_mean": round(mean_compute, 2),
        "wall_over_compute": round(wall / mean_compute, 2) if mean_compute > 0 else None,
    }


def print_timeline(result):
    print(f"wall {result['wall_s']:.1f} s (times in seconds since snakemake started)")
    print(f"{'stage':16s} {'start':>8s} {'end':>8s} {'seconds':>8s}")
    for stage, s in result["stages"].items():
        if s:
            print(f"{stage:16s} {s['start']:8.1f} {s['end']:8.1f} {s['s']:8.1f}")
    for slot, s in result["sidecars"].items():
        busy = "n/a" if s["busy_fraction"] is None else f"{s['busy_fraction']:.0%}"
        print(f"sidecar {slot} ({s['device']}): start {s['start']} -> READY {s['ready']} (load {s['load_s']} s, "
              f"{s['load_overlaps_preparation_s']} s of it during preparation); requests {s['first_request']} .. "
              f"{s['last_request']}; compute {s['compute_s']} s ({s['compute_from']}); busy {busy} of READY..last "
              f"request, {s['busy_fraction_of_wall']:.0%} of the wall")
    for rule, r in result["rules"].items():
        print(f"  rule {rule:20s} {r['start']:8.1f} {r['end']:8.1f}  ({r['jobs']} jobs)")
    ratio = result["wall_over_compute"]
    print(f"wall / sidecar compute (mean over {len(result['sidecars'])} sidecar(s), "
          f"{result['compute_s_mean']} s): {ratio if ratio is not None else 'n/a'}")


def write_config(workdir, args, inputs):
    """A config for this run: the models, the device and the input, split into about --parts parts."""
    import yaml

    sheet = workdir / "samples.tsv"
    sheet.write_text("sample\tfasta\n" + "".join(f"{s}\t{p}\n" for s, (p, _) in inputs.items()))
    per_sample = max(1, args.parts // len(inputs))
    frames = max(n for _, n in inputs.values())
    records_per_file = args.records_per_file or (-(-frames // per_sample) if frames else 10000)
    embedding = {"sidecar": True, "device": args.device, "idle_timeout": 900}
    if args.mode:
        embedding["mode"] = args.mode
    if args.gpus:
        embedding["gpus"] = list(range(args.gpus))
    if args.demo:
        demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
        models, demo_models = demo["models"], True
    else:
        esm, dna, classifier = wf.find_models(args.models_dir, args.size)
        wf.write_classifier(classifier, args.size)
        models = {"esm2": str(esm), "dnabert_s": str(dna), "classifiers": {str(wf.CHUNK): str(classifier)}}
        demo_models = False
    config = {"samples": str(sheet), "chunk_size": wf.CHUNK, "keep_intermediate": False,
              "demo_models": demo_models, "records_per_file": max(1, records_per_file),
              "models": models, "embedding": embedding}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="run this workflow config as it is (its samples and models; absolute "
                    "paths, since the run is in a fresh work directory)")
    ap.add_argument("--models-dir", help="bench/real_models.py's models (with --size)")
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--demo", action="store_true", help="the demo's tiny models, made by the workflow")
    ap.add_argument("--fasta", nargs="+", help="input FASTA files, one sample each")
    ap.add_argument("--frames", type=int, default=32000, help="synthetic input: kept frames in all")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--parts", type=int, default=16, help="synthetic input: part files in all (about)")
    ap.add_argument("--records-per-file", type=int, help="frames per part (default: from --parts; with "
                    "--fasta 10000, the original's)")
    ap.add_argument("--device", choices=("cuda", "cpu", "auto"), default="auto")
    ap.add_argument("--mode", choices=("fast", "exact", "auto"))
    ap.add_argument("--gpus", type=int, help="embedding.gpus = [0 .. N-1] (default: every visible GPU)")
    ap.add_argument("--cores", type=int, default=16)
    ap.add_argument("--work", default="/tmp/virnucflow_e2e", help="scratch directory (its run/ is replaced)")
    ap.add_argument("--out", help="write the timeline as JSON here")
    ap.add_argument("--run-timeout", type=int, default=0, help="seconds for the snakemake run (0: no limit)")
    args = ap.parse_args(argv)
    if not (args.config or args.demo or args.models_dir):
        ap.error("give --config, --demo or --models-dir")
    work = Path(args.work).resolve()
    workdir = work / "run"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    wf.write_wrappers(work / "bin")
    if args.config:
        config = Path(args.config).resolve()
    else:
        if args.fasta:
            inputs = {Path(f).name.split(".")[0]: (Path(f).resolve(), 0) for f in args.fasta}
        else:
            inputs = wf.write_inputs(work / "input", args.frames, args.samples, min(16, os.cpu_count() or 1))
        config = write_config(workdir, args, inputs)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PATH=f"{work / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    with StatusPoller(workdir) as poller:
        try:
            start, wall = wf.run_snakemake("e2e", workdir, config, env, args, workdir)
        except wf.RunFailed as exc:
            print(f"e2e: {exc}", file=sys.stderr)
            return 1
    result = dict(timeline(workdir, start, wall, poller.last), config=str(config), cores=args.cores)
    print_timeline(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
