"""The workflow on a real SLURM cluster (issue 5): the single-node slurmctld + slurmd that `.ci/run` starts
with .ci/slurm/setup.sh. Through the SLURM profile (executor plugin): the results equal a local run's, SLURM ran
every job (its job completion log), the sidecar ran as a SLURM job of its own holding the GPU, loaded the
models once and served every per-file job. A sidecar job cancelled mid-run fails its clients cleanly and a
rerun completes. The single-allocation way (the local profile inside `sbatch`) gives the same results, and such
a run killed at its time limit leaves nothing behind.

Without SLURM these tests skip on a developer's machine, but fail in CI (CI=true): there `.ci/run` must have
started the cluster."""

import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow_runs import (
    DEMO_DATA, LOCAL_PROFILE, REPO, job_state, jobcomp_records, need_cluster, orf_workload, slurm_jobids,
    slurm_problem, slurm_profile, snakemake, start_snakemake, wait_for, write_config,
)

pytestmark = pytest.mark.slurm
RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv")
SAMPLES = ("phage_mix", "reads_gz")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    need_cluster(slurm_problem(), "SLURM")


def ci_profile(dest, **changes):
    """The SLURM profile as it is, but for this 2-CPU node and quick status checks: squeue, since this
    cluster keeps no accounting database for sacct; a first check after 1 s; a smaller sidecar job."""
    changes.setdefault("set_resources", {}).setdefault("sidecar", {}).update(
        cpus_per_task=1, mem_mb=3000, runtime=30)
    changes.setdefault("default_resources", {}).update(mem_mb=1000, runtime=15)
    return slurm_profile(dest, slurm_status_command="squeue", slurm_init_seconds_before_status_checks=1,
                         latency_wait=5, **changes)


def sidecar_pids():
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split(None, 1)[0]) for line in out.splitlines() if "sidecar serve" in line}


def environ_of(pid):
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def cwd_of(pid):
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def sidecar_jobid(workdir, slot="cpu"):
    """The SLURM job id that the sidecar job's batch script printed last (logs/sidecar/<slot>.slurm.log)."""
    path = workdir / f"logs/sidecar/{slot}.slurm.log"
    lines = [line for line in path.read_text().splitlines() if line.startswith("sidecar: SLURM job ")] \
        if path.exists() else []
    return lines[-1].split()[3] if lines else None


def leftovers(workdir):
    """What a finished or killed run must not leave: sidecar processes of this workdir, endpoint files,
    half-written files of the atomic writers (.<name>.<random>.tmp). Snakemake's own bookkeeping (its
    incomplete markers, temp() files that a killed run had no time to remove) is not counted."""
    found = [f"sidecar pid {p}" for p in sidecar_pids() if cwd_of(p) == workdir]
    sidecar_dir = workdir / ".virnucflow/sidecar"
    if sidecar_dir.is_dir():  # endpoint files and SLURM leases (a local run's flag is an empty file, not one)
        found += [str(p) for p in sidecar_dir.glob("*.json") if p.stat().st_size]
        found += [str(p) for p in sidecar_dir.glob("*/*.started") if p.stat().st_size]
    found += [str(p) for p in (workdir / "results").rglob(".*.tmp")] if (workdir / "results").is_dir() else []
    return found


def same_results(a, b, samples=SAMPLES):
    return {f"{s}/{n}": (a / "results" / s / n).read_bytes() == (b / "results" / s / n).read_bytes()
            for s in samples for n in RESULTS}


@pytest.fixture(scope="module")
def local_reference(demo_run):
    """The demo run locally with a sidecar on the CPU: the run that the tests share (conftest.demo_run)."""
    return demo_run


def sidecar_status(endpoint):
    """`sidecar status` of a running sidecar (what it serves: mode, device, fingerprints), or None."""
    proc = subprocess.run([sys.executable, "-m", "sidecar", "status", "--endpoint-file", str(endpoint)],
                          capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def watch_sidecar(proc, endpoint, seen, deadline):
    """Until `proc` ends: the sidecar job's pid, environment and SLURM state, and its status once ready."""
    while proc.poll() is None and time.monotonic() < deadline:
        if endpoint.exists() and "pid" not in seen:
            try:
                seen["pid"] = json.loads(endpoint.read_text())["pid"]
                seen["environ"] = environ_of(seen["pid"])
                seen["state"] = job_state(seen["environ"].get("SLURM_JOB_ID", "0"))
            except (ValueError, KeyError, OSError):
                seen.pop("pid", None)
        if "pid" in seen and "status" not in seen:
            status = sidecar_status(endpoint)
            if status and status.get("state") == "ready":
                seen["status"] = status
        if "status" in seen and seen.get("stop_when_seen"):
            return
        time.sleep(0.3)


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    """The demo through the SLURM profile, watched while it runs: the sidecar process and its SLURM job."""
    workdir = tmp_path_factory.mktemp("slurm")
    write_config(workdir, embedding={"sidecar": True, "device": "cpu", "mode": "exact"})
    profile = ci_profile(workdir / "profile")
    proc = start_snakemake(workdir, "--workflow-profile", str(profile))
    seen = {}
    watch_sidecar(proc, workdir / ".virnucflow/sidecar/cpu.json", seen, time.monotonic() + 900)
    if proc.poll() is None:
        proc.kill()
    output = (workdir / "snakemake.out").read_text()
    assert proc.wait() == 0, output[-6000:]
    return workdir, output, seen


def test_slurm_results_equal_a_local_runs(slurm_run, local_reference):
    workdir, _, _ = slurm_run
    assert all(same_results(workdir, local_reference).values()), same_results(workdir, local_reference)


def test_slurm_ran_every_job(slurm_run):
    workdir, output, _ = slurm_run
    jobids = slurm_jobids(output)
    # everything but the local rules (all, sidecar) went to SLURM: shard, prepare, split, embed, merge...
    assert len(jobids) >= 14, output[-3000:]
    records = jobcomp_records()
    for jobid in jobids:
        assert records.get(jobid, {}).get("JobState") == "COMPLETED", (jobid, records.get(jobid))
    # one SLURM job per job of the run, but for the two local rules (all, and the sidecar rule that submits)
    ran = re.findall(r"^(?:rule|checkpoint) (\w+):$", output, re.M)
    assert len(jobids) == len([r for r in ran if r not in ("all", "sidecar")]), (jobids, ran)
    for rule in ("make_demo_models", "shard", "prepare_shard", "embed", "merge", "classify_part", "classify"):
        assert rule in ran, rule


def test_the_sidecar_was_one_slurm_job_holding_the_gpu_and_served_every_part(slurm_run):
    workdir, output, seen = slurm_run
    jobid = sidecar_jobid(workdir)
    assert jobid, "".join(p.read_text() for p in (workdir / "logs/sidecar/cpu").glob("*.start.log"))
    record = jobcomp_records()[jobid]
    assert record["Name"] == "virnucflow-sidecar-cpu" and record["JobState"] == "COMPLETED", record
    # the profile's GPU request was scheduled: SLURM gave the job the node's (stand-in) GPU
    assert f"SLURM job {jobid} on {os.uname().nodename}, GPUs 0," in (workdir / "logs/sidecar/cpu.slurm.log").read_text()
    # seen while it ran: the sidecar process lived in that SLURM job, which SLURM listed as running,
    # and SLURM had given it the (stand-in) GPU
    assert seen.get("environ", {}).get("SLURM_JOB_ID") == jobid, seen
    assert seen["environ"].get("CUDA_VISIBLE_DEVICES") == "0", seen["environ"]
    assert seen.get("state") == "RUNNING", seen
    # the sidecar job serves what the config asked for (embedding.mode: exact), as it says itself
    assert seen["status"]["mode"] == "exact" and seen["status"]["device"] == "cpu", seen["status"]
    assert jobid not in slurm_jobids(output)  # not a Snakemake job: the sidecar rule submitted it
    log = (workdir / "logs/sidecar/cpu.server.log").read_text()
    assert log.count("loaded esm2") == 1 and log.count("loaded dnabert_s") == 1
    assert "bound tcp://" in log
    parts = len(list((workdir / "results").glob("*/merged/output_*_merged.pt")))
    embeds = [line for line in log.splitlines() if " embed " in line and line.endswith(" ok")]
    served = collections.Counter(line.split("model=")[1].split()[0] for line in embeds)
    # each part's DNA in one request; its proteins in one request per batch of the original's (exact mode)
    assert served["dnabert_s"] == parts and served["esm2"] >= parts, served
    # it ended when the last per-file job was done: Snakemake removed the samples' temp leases on it
    assert "no sample holds a lease any more (.virnucflow/sidecar/cpu)" in log
    assert not leftovers(workdir), leftovers(workdir)


def test_the_sidecar_job_serves_the_configured_fast_mode(tmp_path):
    """The mode travels to the SLURM sidecar job too (it once did not): asked while it runs, it says fast."""
    write_config(tmp_path, embedding={"sidecar": True, "device": "cpu", "mode": "fast"})
    proc = start_snakemake(tmp_path, "--workflow-profile", str(ci_profile(tmp_path / "profile")))
    seen = {"stop_when_seen": True}
    try:
        watch_sidecar(proc, tmp_path / ".virnucflow/sidecar/cpu.json", seen, time.monotonic() + 600)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        subprocess.run(["scancel", "--name", "virnucflow-sidecar-cpu"], capture_output=True)
    assert seen.get("status"), (tmp_path / "snakemake.out").read_text()[-4000:]
    assert seen["status"]["mode"] == "fast" and seen["status"]["fingerprints"]["esm2"], seen["status"]
    assert seen["environ"].get("SLURM_JOB_ID"), seen


def test_a_cancelled_sidecar_job_fails_its_clients_cleanly_and_a_rerun_completes(tmp_path, local_reference):
    workdir = tmp_path / "cancel"
    # 7 parts, one client job after another on this 2-CPU node: room to cancel the sidecar mid-run
    write_config(workdir, records_per_file=8, embedding={"sidecar": True, "device": "cpu"})
    profile = ci_profile(tmp_path / "profile")
    proc = start_snakemake(workdir, "--workflow-profile", str(profile), "--retries", "0")
    server_log = workdir / "logs/sidecar/cpu.server.log"

    def served_one_client():
        return server_log.exists() and server_log.read_text().count(" ok\n") >= 2

    assert wait_for(served_one_client, 600), (workdir / "snakemake.out").read_text()[-4000:]
    jobid = sidecar_jobid(workdir)
    subprocess.run(["scancel", jobid], check=True)
    assert proc.wait(timeout=900) != 0
    output = (workdir / "snakemake.out").read_text()
    assert jobcomp_records()[jobid]["JobState"] == "CANCELLED"
    assert wait_for(lambda: not leftovers(workdir), 60), leftovers(workdir)
    logs = {p.name: p.read_text() for p in (workdir / "logs").glob("*/embed/*.log")}
    failed = {name: text for name, text in logs.items() if "sidecar embed:" in text}
    done = len(list((workdir / "results").glob("*/embeddings/*_ESM.npz"))) + \
        len(list((workdir / "results").glob("*/merged/*.pt")))
    assert done >= 1, "no part was embedded before the cancel"
    # A client that was talking to the sidecar fails with one line; a client that starts after the sidecar
    # job is gone fails before its command runs: its input, its sample's lease, is missing (the stopped
    # sidecar removed the leases; Snakemake then reports its outputs missing). No outputs of either are left.
    assert re.search(r"(Error|MissingOutputException) in rule embed", output) or failed, output[-4000:]
    for name, text in failed.items():
        assert "Traceback" not in text, (name, text)

    rerun = snakemake(workdir, "--workflow-profile", str(profile), timeout=900)
    assert "Finished jobid: 0 (Rule: all)" in rerun.stdout or "steps (100%) done" in rerun.stdout
    assert all(same_results(workdir, local_reference).values()), same_results(workdir, local_reference)
    log = server_log.read_text()
    assert log.count("loaded esm2") == 2, "the rerun did not start a new sidecar job"
    assert sidecar_jobid(workdir) != jobid
    assert not leftovers(workdir), leftovers(workdir)


def sbatch_local_profile(workdir, time_limit, *extra):
    """The single-allocation way: the whole workflow, with the local profile, inside one SLURM job.

    `exec`: Snakemake is the batch process itself. Snakemake 9's SIGTERM handler takes the scheduler's lock,
    and when the signal comes while the main thread holds that lock, the process hangs for good. SLURM
    follows its SIGTERM at the time limit with SIGKILL, but with this CI cluster's proctrack/linuxproc it
    loses a process whose parent (the batch shell) has exited already: such a hung Snakemake (and the
    sidecar that watches it) outlived the allocation. The batch process itself is never lost."""
    command = "exec " + " ".join([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                        "--workflow-profile", str(LOCAL_PROFILE), "--configfile", "config.yaml", *extra])
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(
        ["sbatch", "--parsable", "--job-name", "virnucflow-run", "--cpus-per-task=2", "--mem=8000",
         f"--time={time_limit}", "--output", str(workdir / "allocation.out"), "--chdir", str(workdir),
         "--wrap", command],
        capture_output=True, text=True, env=env, check=True)
    return proc.stdout.strip().split(";")[0]


def test_the_whole_workflow_in_one_allocation_with_the_local_profile(tmp_path, local_reference):
    workdir = tmp_path / "allocation"
    write_config(workdir, embedding={"sidecar": True, "device": "cpu"})
    jobid = sbatch_local_profile(workdir, "15")
    seen = {}

    def finished():
        for pid in sidecar_pids():
            env = environ_of(pid)
            if env.get("SLURM_JOB_ID") == jobid:
                seen[pid] = env
        return job_state(jobid) in (None, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")

    assert wait_for(finished, 600, step=0.3)
    out = (workdir / "allocation.out").read_text()
    assert wait_for(lambda: jobcomp_records().get(jobid, {}).get("JobState") == "COMPLETED", 30), out[-4000:]
    assert seen, "no sidecar was seen inside the allocation"
    assert all(same_results(workdir, local_reference).values())
    log = workdir / "logs/sidecar/cpu.server.log"
    assert log.read_text().count("loaded esm2") == 1 and "bound ipc://" in log.read_text()
    # it ended with the Snakemake process that started it, inside the allocation
    assert wait_for(lambda: "stopped (watched pid" in log.read_text(), 30), log.read_text()[-2000:]
    assert wait_for(lambda: not leftovers(workdir), 30), leftovers(workdir)


def test_a_run_killed_at_its_time_limit_leaves_nothing_behind(tmp_path):
    workdir = tmp_path / "walltime"
    # 1000 parts take minutes on 2 CPUs (about 0.2 s each now that no per-part job imports torch: 200 parts
    # finished within the limit); SLURM ends the allocation after 1 minute (its time check runs every 30 s,
    # so within 90 s), in the middle of the embedding or merging
    orf_workload(workdir, 1000, embedding={"sidecar": True, "device": "cpu"})
    jobid = sbatch_local_profile(workdir, "1")
    assert wait_for(lambda: job_state(jobid) in (None, "TIMEOUT", "COMPLETED", "FAILED"), 300, step=1)
    assert wait_for(lambda: jobcomp_records().get(jobid, {}).get("JobState") == "TIMEOUT", 60), \
        (workdir / "allocation.out").read_text()[-3000:]
    assert list((workdir / "results/orfs/parts").glob("output_*.fa")), "it was killed before the embedding"
    assert wait_for(lambda: not leftovers(workdir), 60), leftovers(workdir)
    # whatever outputs exist are whole: the writers are atomic
    from virnucflow.embedding_files import load_embeddings
    import torch

    for path in (workdir / "results").rglob("*.npz"):
        load_embeddings(path)
    for path in (workdir / "results").rglob("*_merged.pt"):
        torch.load(path, weights_only=True)
    # and the next run plans only what is missing, with nothing to clean up by hand
    plan = snakemake(workdir, "-n", "--workflow-profile", str(LOCAL_PROFILE)).stdout
    assert "embed" in plan or "merge" in plan


def test_a_sample_added_to_a_finished_slurm_run_embeds_only_itself(slurm_run):
    """Each sample takes a lease of its own on the sidecar job, so the added sample's lease starts a new
    sidecar job and no job of a finished sample is redone (with one flag shared by the samples, Snakemake
    redid them all). Last in this file: it adds to the shared run's directory."""
    workdir, _, _ = slurm_run
    finished = {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()}
    sheet = workdir / "samples_plus.tsv"
    sheet.write_text((workdir / "samples.tsv").read_text() + f"added\t{DEMO_DATA / 'phage_mix.fa'}\n")
    rerun = snakemake(workdir, "--workflow-profile", str(ci_profile(workdir / "profile")), "--config",
                      f"samples={sheet}", timeout=900).stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "a finished sample was redone"
    embedded = set(re.findall(r"results/(\w+)/embeddings/output_\d+_ESM\.npz", rerun))
    assert embedded == {"added"}, embedded
    assert (workdir / "results/added/prediction_results.txt").read_bytes() == \
        (workdir / "results/phage_mix/prediction_results.txt").read_bytes()
    log = (workdir / "logs/sidecar/cpu.server.log").read_text()
    assert log.count("loaded esm2") == 2 and log.count("stopped (no sample holds a lease any more") == 2
    assert not leftovers(workdir), leftovers(workdir)
