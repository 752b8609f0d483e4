"""Start one embedding sidecar as its own SLURM job, or find the one running, and take a sample's lease on it.

Run by the `sidecar` rule, once per sample and GPU, when the workflow runs under the SLURM executor
(docs/architecture.md, "Under SLURM"). The sidecar job holds the GPU (and the CPUs and memory) that the
`sidecar` rule's resources ask for; it listens on TCP with CURVE authentication, and the per-file jobs,
which are CPU jobs anywhere in the cluster, reach it through its endpoint file on the shared file system.

With --lease (the workflow's way), the rule's output is the sample's lease (sidecar.leases): under a lock,
the lease file is written, and a sidecar job of this endpoint file that SLURM still runs is reused if a ping
that announces the lease finds it loading or ready; one that is stopping is waited for, and then, as when
there is none, a new job is submitted. Snakemake deletes a sample's lease after its last embed job, and the
sidecar job ends once no lease remains. Without --lease, the endpoint file is the output, and the sidecar
exits when it is removed. Its idle timeout and its time limit bound it when the run itself dies.

Standard library, the torch-free sidecar client and sidecar.safe_files only: this runs on the submit host,
where Snakemake runs. Like the sidecar's own files, a batch script, endpoint, job id, lock or lease file or
SLURM output file that may be another user's (a link, or not ours) is refused, never used nor replaced.
"""

import argparse
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from sidecar import protocol, safe_files

RUNNING = {"PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint-file", required=True, help="the endpoint file the sidecar writes (the rule's output)")
    p.add_argument("--job-name", required=True)
    p.add_argument("--output", required=True, help="the SLURM job's own output file")
    p.add_argument("--device", default="auto", help="auto: cuda:0 when SLURM gave the job a GPU, else cpu")
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (CURVE-authenticated)")
    p.add_argument("--python", default=sys.executable, help="the Python that runs `-m sidecar serve`")
    p.add_argument("--sbatch-args", default="", help="extra sbatch options (account, partition, resources)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between checks while waiting")
    p.add_argument("--lease", help="a sample's lease file to write (the rule's output); the endpoint file is then "
                   "shared by the run's samples, and a running sidecar job of it is reused")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- then the options of `sidecar serve`")
    ns = p.parse_args(argv)
    if ns.serve_args[:1] == ["--"]:
        ns.serve_args = ns.serve_args[1:]
    return ns


def batch_script(ns, endpoint, secret):
    serve = [ns.python, "-m", "sidecar", "serve", "--endpoint-file", str(endpoint),
             "--tcp", f"{ns.bind}:0", "--secret-file", str(secret), *ns.serve_args]
    if ns.lease:
        serve += ["--lease-dir", str(Path(ns.lease).parent)]
    if ns.device == "auto":
        device = ('device=cpu; case "${CUDA_VISIBLE_DEVICES:-}" in ""|NoDevFiles|-1) ;; '
                  "*) device=cuda:0 ;; esac")
    else:
        device = f"device={shlex.quote(ns.device)}"
    return "\n".join([
        "#!/bin/bash",
        f"# virnucflow embedding sidecar, submitted by {Path(__file__).name}: one per GPU of the run.",
        "# It exits when no sample holds a lease on it any more (or, without leases, when its endpoint",
        "# file is removed), on SIGTERM (scancel, time limit), or after its idle timeout.",
        device,
        'echo "sidecar: SLURM job ${SLURM_JOB_ID} on $(hostname), GPUs ${SLURM_JOB_GPUS:-none}, device ${device}"',
        f"exec {shlex.join(serve)} --device \"$device\"",
        "",
    ])


def job_state(job_id):
    """The job's state from squeue, or None once squeue no longer lists it."""
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    state = proc.stdout.strip()
    return state or None


def tail(path, n=20):
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(True)[-n:])
    except OSError:
        return ""


def accepts_lease(endpoint, lease):
    """The state in which the sidecar named by this endpoint file answers a ping that announces `lease`
    (a file name in its lease directory), or None if it does not answer within seconds."""
    from sidecar.client import SidecarClient, SidecarError

    try:
        with SidecarClient(endpoint, tries=1, silent_timeout=10.0) as client:
            return client.ping(timeout=10.0, lease=lease).get("state")
    except SidecarError:
        return None


def running_job(ns, write_lease):
    """The id of this endpoint's sidecar job if SLURM still runs it (waiting while it is pending or
    requeued) and it keeps serving with this lease; None when a new job is needed (after the old one
    has ended, when it was stopping)."""
    job_file = Path(ns.endpoint_file).with_suffix(".jobid")
    try:
        job_id = safe_files.read_text(job_file, "sidecar job id file").strip()
    except FileNotFoundError:
        return None
    said = None
    while job_state(job_id) in RUNNING:
        if Path(ns.endpoint_file).exists():
            write_lease(job_id)  # before the ping, so that a sidecar that keeps serving can see it
            state = accepts_lease(ns.endpoint_file, Path(ns.lease).name)
            if state in (protocol.LOADING, protocol.READY):
                print(f"sidecar job {job_id} is {state} and holds the lease: reused", flush=True)
                return job_id
            if state != said:
                print(f"sidecar job {job_id} is {state or 'not answering'}: waiting for it to end", flush=True)
                said = state
        time.sleep(ns.poll)
    return None


def take_lease(ns):
    """Under the endpoint's lock: reuse or submit the sidecar job, then write the sample's lease."""
    endpoint = Path(ns.endpoint_file)
    safe_files.make_dir(endpoint.parent)
    safe_files.make_dir(Path(ns.lease).parent)
    lock = safe_files.open_append(endpoint.with_suffix(".lock"), "lock file")

    def write_lease(job_id):
        safe_files.replace_text(Path(ns.lease), json.dumps({"job": job_id, "endpoint": str(endpoint)}) + "\n",
                                "lease file")

    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the sidecar rule is a local rule: every taker runs on this host
        job_id = running_job(ns, write_lease)
        if job_id is None:
            # (a sidecar that stopped for a reason other than its leases removed them, this one included)
            rc = submit_and_wait(ns)
            if rc != 0:
                return rc
            job_id = safe_files.read_text(endpoint.with_suffix(".jobid"), "sidecar job id file").strip()
            write_lease(job_id)
        print(f"lease {ns.lease} taken on sidecar job {job_id}", flush=True)
        return 0
    finally:
        os.close(lock)


def main(argv=None):
    ns = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return take_lease(ns) if ns.lease else submit_and_wait(ns)
    except safe_files.UnsafePath as exc:
        print(f"slurm_sidecar: {exc}", file=sys.stderr)
        return 1


def submit_and_wait(ns):
    endpoint = Path(ns.endpoint_file)
    safe_files.make_dir(endpoint.parent)
    os.close(safe_files.open_append(ns.output, "SLURM output file"))  # slurmd appends to it, following links
    try:
        safe_files.check_path(endpoint, "endpoint file")
        endpoint.unlink()  # a stale file from a dead sidecar would be taken for the new one
    except FileNotFoundError:
        pass
    secret = endpoint.with_suffix(".secret")
    script = endpoint.with_suffix(".sbatch")
    safe_files.replace_text(script, batch_script(ns, endpoint, secret), "batch script")
    cmd = ["sbatch", "--parsable", "--job-name", ns.job_name, "--output", ns.output,
           "--open-mode=append", "--export=ALL", *shlex.split(ns.sbatch_args), str(script)]
    print("submitting:", shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"slurm_sidecar: sbatch failed: {' '.join(proc.stderr.split())}", file=sys.stderr)
        return 1
    job_id = proc.stdout.strip().split(";")[0]
    safe_files.replace_text(endpoint.with_suffix(".jobid"), job_id + "\n", "sidecar job id file")
    print(f"sidecar job {job_id} submitted; waiting until it has bound its socket", flush=True)

    def cancel(signum, frame):  # Snakemake stops this rule: the sidecar job must not start later
        subprocess.run(["scancel", job_id], capture_output=True)
        print(f"slurm_sidecar: interrupted; cancelled job {job_id}", file=sys.stderr)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, cancel)
    signal.signal(signal.SIGINT, cancel)
    last_state = None
    while True:
        if endpoint.exists():
            try:
                info = json.loads(safe_files.read_text(endpoint, "endpoint file"))
            except (OSError, ValueError):
                info = None  # written atomically, so this is only a race with a removal
            except safe_files.UnsafePath:
                subprocess.run(["scancel", job_id], capture_output=True)
                raise
            if info:
                print(f"sidecar job {job_id} is up: pid {info.get('pid')} on {info.get('host')}, "
                      f"{info.get('endpoint')}", flush=True)
                return 0
        state = job_state(job_id)
        if state != last_state:
            print(f"sidecar job {job_id}: {state or 'finished'}", flush=True)
            last_state = state
        if state not in RUNNING:
            if endpoint.exists():
                continue
            print(f"slurm_sidecar: sidecar job {job_id} ended ({state or 'gone from squeue'}) before "
                  f"it wrote {endpoint}; its output ({ns.output}) ends with:\n{tail(ns.output)}",
                  file=sys.stderr)
            return 1
        time.sleep(ns.poll)


if __name__ == "__main__":
    sys.exit(main())
