"""How far a workflow run in a directory has got, read from its files while it runs.

- Per sample, from `results/<sample>/`: shards prepared, chunked, translated, parts split, parts embedded and
  merged (k of n), classified, per-record calls; plus the newest progress line of the step that
  is still going (from `logs/<sample>/`).
- Overall, from the newest run's `.snakemake/log/*.snakemake.log`: "N of M steps (P%) done"
  (M grows once the parts of a sample are known), whether a run holds the directory's lock, and
  the jobs running now: their outputs are marked in `.snakemake/incomplete/`, and the run's log
  says which job writes which outputs, so that a job with three outputs counts once.
  Snakemake also logs `--lint`, `--report`, `--dag`, `--unlock` and the like there; those logs
  lack the header that a run (not a dry run, which logs nothing) writes first, and are skipped.
- Each sidecar with an endpoint file in `.virnucflow/sidecar/`: `sidecar status`, run as a
  subprocess so that nothing here imports torch.
"""

import base64
import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

SIDECAR_DIR = ".virnucflow/sidecar"
_STEPS = re.compile(r"(\d+) of (\d+) steps \((\d+)%\) done")
_PART = re.compile(r"output_(\d+)")
# what only the log of a run holds: the header that Snakemake writes when it starts executing, and
# the lines of a run that was started with the header quietened (--quiet host)
_NOTHING_TO_DO = "Nothing to be done"
_RUN_MARKS = ("\nSNAKEMAKE\n=========\n", "Job stats:", _NOTHING_TO_DO)
_ERROR_LINE = re.compile(r"^\w*(?:Error|Exception)\b")
_JOB_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
_JOB_OUTPUT = re.compile(r"^\s+output: (.+)$")
_JOB_ID = re.compile(r"^\s+jobid: (\d+)$")


def _planned_shards(plan):
    """The number of shards in a sample's plan (`shard`), or None if there is none (yet, or any more)."""
    try:
        return json.loads(plan.read_text())["shards"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sample_progress(workdir, sample, running=()):
    """A dict of the sample's steps: booleans for whole-sample steps, counts for per-part ones.

    A file that a running job is still writing (`running`, paths relative to workdir) is not done yet.
    """
    workdir = Path(workdir)
    busy = {workdir / f for f in running}
    out = workdir / "results" / sample

    def done(path):
        return path.is_file() and path not in busy

    def parts(directory, pattern):
        return {int(m.group(1)) for p in directory.glob(pattern) if (m := _PART.match(p.name)) and p not in busy}

    merged = parts(out / "merged", "output_*_merged.pt")
    embedded = merged | (parts(out / "embeddings", "output_*_DNABERT_S.npz") & parts(out / "embeddings", "output_*_ESM.npz"))
    split = parts(out / "parts", "output_*.fa") if (out / "parts").is_dir() and out / "parts" not in busy else None
    classified = done(out / "prediction_results_highestscore.csv")
    n_parts = _counted_parts(out / "parts.json") if done(out / "parts.json") else None
    if n_parts is None:
        n_parts = len(split) if split is not None else (len(merged) if classified else None)
    translated = done(out / "identified_protein.faa") or n_parts is not None
    info = {
        "sample": sample,
        "shards": _planned_shards(out / "shards" / "plan.json") if out / "shards" not in busy else None,
        "shards_prepared": sum(done(p) for p in (out / "prepared").glob("shard_*.protein.faa")),
        "chunked": done(out / "chunked.fa") or translated,
        "translated": translated,
        "parts": n_parts,
        "embedded": len(embedded),
        "merged": len(merged),
        "classified": classified,
        "contigs": done(out / "virus_contigs.tsv"),
    }
    info["stage"] = _stage(info)
    info["last_log"] = None if info["contigs"] else _last_progress(Path(workdir) / "logs" / sample)
    return info


def _counted_parts(path):
    """The number of parts that `count-parts` wrote for a sample, or None if unreadable."""
    try:
        return int(json.loads(path.read_text())["parts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stage(info):
    if info["contigs"]:
        return "done"
    if info["classified"]:
        return "calling records"
    if info["parts"] is not None and info["merged"] == info["parts"]:
        return "classifying"
    if info["parts"] is not None:
        return f"embedding ({info['embedded']}/{info['parts']} parts embedded, {info['merged']} merged)"
    if info["translated"]:
        return "splitting"
    if info["chunked"]:
        return "translating"
    if info["shards"] is not None:
        return f"preparing ({info['shards_prepared']}/{info['shards']} shards chunked and translated)"
    return "waiting"


def _last_progress(log_dir):
    """The newest line of the sample's logs (steps and parts), if one was written in the last hour."""
    logs = [p for p in log_dir.rglob("*.log") if p.is_file() and p.stat().st_size] if log_dir.is_dir() else []
    newest = max(logs, key=lambda p: p.stat().st_mtime, default=None)
    if newest is None or time.time() - newest.stat().st_mtime > 3600:
        return None
    lines = [line for line in newest.read_text(errors="replace").splitlines() if line.strip()]
    return f"{newest.relative_to(log_dir)}: {lines[-1].strip()}" if lines else None


def _samples(workdir, sample_sheet=None):
    if sample_sheet:
        with open(sample_sheet, newline="") as fh:
            return [r["sample"] for r in csv.DictReader(fh, delimiter="\t") if (r.get("sample") or "").strip()]
    results = Path(workdir) / "results"
    if not results.is_dir():
        return []
    return sorted(p.name for p in results.iterdir() if p.is_dir())


def is_run_log(text):
    """Whether a `.snakemake/log` file is the log of a run, not of `--lint`, `--report`, `--dag`..."""
    return any(mark in text for mark in _RUN_MARKS) or _STEPS.search(text) is not None


def job_outputs(log_text):
    """{output file: (jobid, rule)} of the jobs that a run's log announces."""
    jobs, rule, outputs = {}, None, []
    for line in log_text.splitlines():
        if m := _JOB_RULE.match(line):
            rule, outputs = m.group(1), []
        elif m := _JOB_OUTPUT.match(line):
            outputs = [f.strip() for f in m.group(1).split(", ")]
        elif (m := _JOB_ID.match(line)) and rule:
            jobs.update({f: (int(m.group(1)), rule) for f in outputs})
            rule, outputs = None, []
    return jobs


def running_jobs(files, log_text):
    """The jobs behind the output files marked incomplete: [{'jobid', 'rule', 'outputs'}], one per job.
    A file that the log does not announce counts as a job of its own."""
    known = job_outputs(log_text)
    jobs = {}
    for f in files:
        jobid, rule = known.get(f, (None, None))
        key = jobid if jobid is not None else f
        jobs.setdefault(key, {"jobid": jobid, "rule": rule, "outputs": []})["outputs"].append(f)
    return list(jobs.values())


def _error_of(text):
    """The last error of a log that has one, in one line: `ValueError: what is wrong`."""
    lines = text.splitlines()
    found = [i for i, line in enumerate(lines) if _ERROR_LINE.match(line)]
    if not found:
        return None
    line = lines[found[-1]].strip()
    if line.endswith(":"):  # `ValueError in file "...", line 36:`, and the message on the next line
        following = [rest.strip() for rest in lines[found[-1] + 1:] if rest.strip()]
        return f"{line.split()[0]}: {following[0]}" if following else line
    return line


def snakemake_progress(workdir):
    """Overall step count and state from the newest run's Snakemake log, the lock and the running jobs."""
    meta = Path(workdir) / ".snakemake"
    logs = sorted((meta / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime) if (meta / "log").is_dir() else []
    info = {"log": None, "done": None, "total": None, "percent": None, "failed": False, "up_to_date": False,
            "locked": any((meta / "locks").glob("*.lock")) if (meta / "locks").is_dir() else False,
            "running": _incomplete(meta / "incomplete")}
    info["stopped_early"] = None
    text = ""
    for path in reversed(logs):
        text = path.read_text(errors="replace")
        if not is_run_log(text):
            error = _error_of(text)
            if error and info["stopped_early"] is None:  # e.g. a config mistake, newer than the run
                info["stopped_early"] = {"log": str(path.relative_to(workdir)), "error": error}
            text = ""
            continue
        info["log"] = str(path.relative_to(workdir))
        info["updated_s_ago"] = round(time.time() - path.stat().st_mtime)
        steps = _STEPS.findall(text)
        if steps:
            info["done"], info["total"], info["percent"] = (int(v) for v in steps[-1])
        info["failed"] = "Error in rule" in text or "Exiting because a job execution failed" in text
        info["up_to_date"] = _NOTHING_TO_DO in text and not steps
        break
    info["jobs"] = running_jobs(info["running"], text)
    return info


def _incomplete(directory):
    """Output files of the jobs that Snakemake marked as running (base64 names, long ones split)."""
    if not directory.is_dir():
        return []
    files = []
    for path in directory.rglob("*"):
        if not path.is_file() or path.name == "migration_underway":
            continue
        encoded = "".join(part.lstrip("@") for part in path.relative_to(directory).parts)
        try:
            files.append(base64.urlsafe_b64decode(encoded).decode())
        except (ValueError, UnicodeDecodeError):
            continue
    return sorted(files)


def sidecar_status(endpoint_file, timeout=3.0):
    """`sidecar status` of one endpoint file, as a dict (or {'error': ...})."""
    cmd = [sys.executable, "-m", "sidecar", "status", "--endpoint-file", str(endpoint_file), "--timeout", str(timeout)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 15)
    except subprocess.TimeoutExpired:
        return {"error": "no answer"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no answer"])[-1].removeprefix("sidecar status: ")}
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"error": "unreadable answer"}


def collect(workdir=".", sample_sheet=None, sidecars=True, extra_endpoints=()):
    workdir = Path(workdir)
    endpoints = sorted((workdir / SIDECAR_DIR).glob("*.json")) if (workdir / SIDECAR_DIR).is_dir() else []
    endpoints += [Path(e) for e in extra_endpoints]
    workflow = snakemake_progress(workdir)
    return {
        "directory": str(workdir.resolve()),
        "workflow": workflow,
        "samples": [sample_progress(workdir, s, workflow["running"]) for s in _samples(workdir, sample_sheet)],
        "sidecars": {str(e): sidecar_status(e) for e in endpoints} if sidecars else {},
    }


def _mark(flag):
    return "yes" if flag else "-"


def _sidecar_line(name, status):
    if "error" in status and "state" not in status:
        return f"  {name}: {status['error']}"
    queue = status.get("queue") or {}
    models = status.get("models") or {}
    done = ", ".join(f"{m}: {v.get('sequences', 0)} seqs / {v.get('tokens', 0)} tokens" for m, v in sorted(models.items()))
    return (f"  {name}: {status.get('state')} on {status.get('device')}, up {status.get('uptime_s', 0):.0f} s, "
            f"queue {queue.get('requests', 0)} requests / {queue.get('tokens', 0)} tokens; {done}")


def _job_text(job):
    first, more = job["outputs"][0], len(job["outputs"]) - 1
    text = f"{job['rule']} {first}" if job["rule"] else first
    return f"{text} (+{more} more output{'s' if more > 1 else ''})" if more else text


def render(report):
    """Human-readable text of `collect()`'s result."""
    wf = report["workflow"]
    lines = [f"directory: {report['directory']}"]
    state = "failed" if wf["failed"] else "running" if wf["locked"] else "not running"
    if wf["done"] is not None:
        lines.append(f"workflow: {state}; {wf['done']} of {wf['total']} steps ({wf['percent']}%) done "
                     f"[{wf['log']}, written {wf['updated_s_ago']} s ago]")
    elif wf["up_to_date"]:
        lines.append(f"workflow: {state}; the last run found nothing to be done [{wf['log']}, "
                     f"written {wf['updated_s_ago']} s ago]")
    else:
        lines.append(f"workflow: {state}; no Snakemake log with a step count yet")
    if wf.get("stopped_early"):
        lines.append(f"a newer Snakemake command stopped before running anything: {wf['stopped_early']['error']} "
                     f"[{wf['stopped_early']['log']}]")
    if wf["jobs"]:
        jobs = [_job_text(job) for job in wf["jobs"]]
        what = "jobs running now" if wf["locked"] else "jobs left unfinished by a run that stopped (they rerun)"
        lines.append(f"{what}: {len(jobs)} ({', '.join(jobs[:6])}{', ...' if len(jobs) > 6 else ''})")
    if report["samples"]:
        header = ("sample", "chunked", "translated", "parts", "embedded", "merged", "classified", "contigs")
        rows = [header] + [
            (s["sample"], _mark(s["chunked"]), _mark(s["translated"]),
             "?" if s["parts"] is None else str(s["parts"]),
             f"{s['embedded']}/{s['parts'] if s['parts'] is not None else '?'}",
             f"{s['merged']}/{s['parts'] if s['parts'] is not None else '?'}",
             _mark(s["classified"]), _mark(s["contigs"]))
            for s in report["samples"]
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        done = sum(s["stage"] == "done" for s in report["samples"])
        lines.append(f"samples done: {done} of {len(report['samples'])}")
        for s in report["samples"]:
            if s["stage"] != "done" and s["last_log"]:
                lines.append(f"  {s['sample']}: {s['stage']}; {s['last_log']}")
    else:
        lines.append("no sample has started (results/ is empty)")
    if report["sidecars"]:
        lines.append("sidecars:")
        lines += [_sidecar_line(Path(name).stem, st) for name, st in report["sidecars"].items()]
    return "\n".join(lines)
