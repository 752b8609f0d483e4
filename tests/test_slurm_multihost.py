"""The SLURM profile across separate hosts (issue 16): the CI cluster's nodes vnf-node1..3, each in its own network
and UTS namespace with its own address, host name and slurmd, sharing the file system (.ci/slurm/nodes.sh).

One shared run: the demo through the SLURM profile with the sidecar job in partition gpu (vnf-node1 first, then
vnf-node2) and every per-file job in partition cpu (vnf-node3), set by the profile's resources. Mid-run the
sidecar's node is lost (its slurmd, the sidecar job and every other process on it killed, its address taken
down): its clients fail with one line within their (short, configured) timeouts. SLURM requeues the sidecar job
(JobRequeue=1, its default), which starts a new sidecar on the surviving GPU node; the rerun completes with it,
and the results equal the local demo run's. A sidecar job on one node is
then reached from another: a client whose traffic to it is dropped says which host and port it could not
reach and what to check, and a client without the CURVE secret gets nothing.

Without the multi-host cluster these tests skip on a developer's machine, but fail in CI (CI=true)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virnucflow.demo_models import DNABERT_DIR, ESM2_FILE
from workflow_runs import (
    REPO, jobcomp_records, need_cluster, slurm_config, slurm_jobids, slurm_problem, slurm_profile,
    start_snakemake, wait_for, write_config,
)

pytestmark = pytest.mark.slurm
NODES_SH = REPO / ".ci" / "slurm" / "nodes.sh"
GPU_NODES = ("vnf-node1", "vnf-node2")
CPU_NODE = "vnf-node3"
RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv")
SAMPLES = ("phage_mix", "reads_gz")
# the clients' patience, short so that a lost sidecar fails them fast (embedding settings, via the config)
CLIENT_TIMEOUTS = {"silent_timeout": 4, "tries": 2, "request_timeout": 20, "ready_timeout": 120}


def multihost_problem():
    problem = slurm_problem()
    if problem:
        return problem
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %P"], capture_output=True, text=True, timeout=30).stdout
    partitions = {tuple(line.split()) for line in out.splitlines()}
    wanted = {(n, "gpu") for n in GPU_NODES} | {(CPU_NODE, "cpu")}
    if not wanted <= partitions:
        return f"no multi-host SLURM here (sinfo lists {sorted(partitions)}); run .ci/slurm/setup.sh as root"
    if os.geteuid() != 0 or not Path(f"/run/netns/{CPU_NODE}").exists():
        return "the multi-host nodes' namespaces are not reachable (root and .ci/slurm/nodes.sh needed)"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    need_cluster(multihost_problem(), "multi-host SLURM")


def nodes(*args):
    subprocess.run(["bash", str(NODES_SH), *args], check=True, timeout=120)


def node_state(node):
    return subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def multihost_profile(dest, **changes):
    """The SLURM profile with the sidecar job in partition gpu and every other job in partition cpu, sized for
    these 2-CPU nodes, with squeue for the status (no accounting database here) checked after 1 s."""
    changes.setdefault("set_resources", {}).setdefault("sidecar", {}).update(
        slurm_partition="gpu", cpus_per_task=1, mem_mb=3000, runtime=30)
    changes.setdefault("default_resources", {}).update(slurm_partition="cpu", mem_mb=1000, runtime=15)
    return slurm_profile(dest, slurm_status_command="squeue", slurm_init_seconds_before_status_checks=1,
                         latency_wait=5, **changes)


def sidecar_jobs(workdir, slot="cpu"):
    """[(SLURM job id, node)] of the sidecar jobs of this workdir, in order, as their batch scripts printed them."""
    path = workdir / f"logs/sidecar/{slot}.slurm.log"
    text = path.read_text() if path.exists() else ""
    return re.findall(r"^sidecar: SLURM job (\d+) on (\S+),", text, re.M)


def same_results(a, b):
    return {f"{s}/{n}": (a / "results" / s / n).read_bytes() == (b / "results" / s / n).read_bytes()
            for s in SAMPLES for n in RESULTS}


def jobcomp_all(jobid):
    """Every record of a job in SLURM's job completion log, in order (a requeued job has one per run)."""
    path = Path(slurm_config("JobCompLoc"))
    records = [dict(tok.split("=", 1) for tok in line.split() if "=" in tok) for line in path.read_text().splitlines()]
    return [r for r in records if r.get("JobId") == jobid]


def endpoint_host(workdir):
    try:
        return json.loads((workdir / ".virnucflow/sidecar/cpu.json").read_text())["endpoint"][6:].rsplit(":")[0]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def lost_node_run(tmp_path_factory):
    """The shared run: the demo through the profile until the sidecar has served a part, then its node is lost.
    SLURM is told the node is down (what slurmctld does itself after SlurmdTimeout) and, as it does by default
    (JobRequeue=1), requeues the sidecar job, which starts again on the surviving GPU node and rewrites the
    endpoint file. Then the rerun. The lost node is brought back afterwards, whatever happened."""
    workdir = tmp_path_factory.mktemp("multihost")
    # 7 parts, two client jobs at a time on vnf-node3: room to lose the sidecar mid-run
    write_config(workdir, records_per_file=8, embedding={"sidecar": True, "device": "cpu", **CLIENT_TIMEOUTS})
    server_log = workdir / "logs/sidecar/cpu.server.log"
    first = start_snakemake(workdir, "--workflow-profile", str(multihost_profile(workdir / "profile-first",
                            keep_going=False)), "--retries", "0", append=True)
    lost = None
    try:
        assert wait_for(lambda: server_log.exists() and server_log.read_text().count(" ok\n") >= 2, 600), \
            (workdir / "snakemake.out").read_text()[-4000:]
        [(first_job, lost)] = sidecar_jobs(workdir)
        endpoint = json.loads((workdir / ".virnucflow/sidecar/cpu.json").read_text())["endpoint"]
        nodes("lose", lost)
        lost_at = time.time()
        first_rc = first.wait(timeout=600)
        first_out = (workdir / "snakemake.out").read_text()
        # the failed clients' logs as the lost sidecar left them (the rerun writes them again); a client that
        # finished writes nothing there
        failed = {str(p.relative_to(workdir)): (p.read_text(), p.stat().st_mtime - lost_at)
                  for p in (workdir / "logs").glob("*/embed/*.log") if p.stat().st_size}
        subprocess.run(["scontrol", "update", f"nodename={lost}", "state=down", "reason=lost in a test"],
                       check=True, timeout=30)
        # SLURM requeues the sidecar job; it starts again after CredentialExpire (30 s here, 120 s by default)
        assert wait_for(lambda: endpoint_host(workdir) not in (None, lost), 300, step=1), \
            (workdir / "logs/sidecar/cpu.slurm.log").read_text()
        rerun = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                                str(workdir), "--configfile", str(workdir / "config.yaml"), "--workflow-profile",
                                str(multihost_profile(workdir / "profile"))],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
                               env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"))
    finally:
        if first.poll() is None:
            first.kill()
        if lost:
            nodes("restore", lost)
    assert rerun.returncode == 0, rerun.stdout[-6000:]
    return {"workdir": workdir, "first_rc": first_rc, "first_out": first_out, "first_job": first_job,
            "lost": lost, "failed": failed, "endpoint": endpoint, "rerun": rerun.stdout}


def test_the_sidecar_and_its_clients_ran_on_separate_hosts_and_the_results_equal_a_local_run(lost_node_run, demo_run):
    run = lost_node_run
    workdir = run["workdir"]
    assert all(same_results(workdir, demo_run).values()), same_results(workdir, demo_run)
    records = jobcomp_records()
    # SLURM's own records: the sidecar job in partition gpu on its node, every per-file job on vnf-node3
    sidecar = jobcomp_all(run["first_job"])
    assert sidecar and all(r["Partition"] == "gpu" for r in sidecar), sidecar
    assert sidecar[0]["NodeList"] == run["lost"], sidecar
    jobids = slurm_jobids(run["first_out"]) + slurm_jobids(run["rerun"])
    assert len(jobids) >= 14
    assert {records[j]["NodeList"] for j in jobids if j in records} == {CPU_NODE}, \
        {j: records.get(j, {}).get("NodeList") for j in jobids}
    assert all(records[j]["Partition"] == "cpu" for j in jobids if j in records)
    # the endpoint that the clients on vnf-node3 used names the sidecar's own host
    assert re.fullmatch(rf"tcp://{run['lost']}:\d+", run["endpoint"]), run["endpoint"]
    log = (workdir / "logs/sidecar/cpu.server.log").read_text()
    assert "bound tcp://0.0.0.0:" in log or "bound tcp://" in log, log[-3000:]
    served = {line.split("client=")[1].split()[0] for line in log.splitlines() if " embed " in line and " ok" in line}
    assert len(served) >= 7, "every part was embedded by a client over TCP from another node"


def test_a_lost_sidecar_node_fails_its_clients_with_one_line_and_a_rerun_uses_the_surviving_node(lost_node_run):
    run = lost_node_run
    workdir = run["workdir"]
    assert run["first_rc"] != 0
    failed = run["failed"]
    assert failed and all("error:" in text for text, _ in failed.values()), (failed, run["first_out"][-4000:])
    host, port = run["endpoint"][len("tcp://"):].rsplit(":", 1)
    budget = CLIENT_TIMEOUTS["silent_timeout"] * CLIENT_TIMEOUTS["tries"]
    for path, (text, after) in failed.items():
        lines = text.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in text, (path, text)
        # it names the lost sidecar, and failed within its timeouts (plus SLURM's and Python's start-up)
        assert f"tcp://{host}:{port}" in lines[0], lines[0]
        assert after < budget + 60, (path, after, text)
    # SLURM saw the job fail with its node and requeued it: it ran again on the other GPU node, where a new
    # sidecar (models loaded a second time) served the rerun's clients until the run was done
    survivor = next(n for n in GPU_NODES if n != run["lost"])
    records = jobcomp_all(run["first_job"])
    assert [(r["NodeList"], r["JobState"]) for r in records] == [(run["lost"], "NODE_FAIL"), (survivor, "COMPLETED")], \
        records
    assert [node for _, node in sidecar_jobs(workdir)] == [run["lost"], survivor]
    log = (workdir / "logs/sidecar/cpu.server.log").read_text()
    assert log.count("loaded esm2") == 2, log[-3000:]
    assert "Finished jobid: 0 (Rule: all)" in run["rerun"] or "steps (100%) done" in run["rerun"]
    # and the lost node is back
    assert node_state(run["lost"]) in ("idle", "mixed"), node_state(run["lost"])


# --- a sidecar job on one node, clients on another --------------------------------------------------------


@pytest.fixture(scope="module")
def remote_sidecar(tmp_path_factory, demo_models):
    """A sidecar SLURM job in partition gpu (no GPU asked: it only needs a node), started the way the workflow
    starts one (workflow/scripts/slurm_sidecar.py), serving the demo models until the tests are done."""
    workdir = tmp_path_factory.mktemp("remote_sidecar")
    endpoint = workdir / "cpu.started"
    cmd = [sys.executable, str(REPO / "workflow/scripts/slurm_sidecar.py"), "--endpoint-file", str(endpoint),
           "--job-name", "virnucflow-sidecar-remote", "--output", str(workdir / "slurm.log"), "--device", "cpu",
           "--sbatch-args", "--partition=gpu --cpus-per-task=1 --mem=3000 --time=15", "--",
           "--esm2", str(demo_models / ESM2_FILE), "--dnabert-s", str(demo_models / DNABERT_DIR),
           "--log", str(workdir / "server.log"), "--idle-timeout", "600"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    info = json.loads(endpoint.read_text())
    from sidecar.client import SidecarClient

    client = SidecarClient(endpoint, ready_timeout=120)
    try:
        client.wait_ready()
    finally:
        client.close()
    yield {"workdir": workdir, "endpoint": endpoint, "info": info, "models": demo_models}
    job = re.search(r"SLURM job (\d+)", (workdir / "slurm.log").read_text())
    if job:
        subprocess.run(["scancel", job.group(1)], capture_output=True, timeout=30)


def on_node(node, *cmd, timeout=120):
    """`cmd` run by SLURM on `node` (srun), as any job there runs."""
    partition = "cpu" if node == CPU_NODE else "gpu"
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    return subprocess.run(["srun", f"--partition={partition}", f"--nodelist={node}", "--mem=1000", "--time=5",
                           *cmd], capture_output=True, text=True, timeout=timeout, env=env)


def test_a_client_whose_traffic_to_the_sidecar_is_dropped_says_which_host_and_port_and_what_to_check(remote_sidecar,
                                                                                                   tmp_path):
    host, port = remote_sidecar["info"]["endpoint"][len("tcp://"):].rsplit(":", 1)
    assert host in GPU_NODES, remote_sidecar["info"]
    (tmp_path / "x.faa").write_text(">x_1F\nMKV\n")
    embed = [sys.executable, "-m", "virnucflow", "embed", "--transport", "sidecar",
             "--endpoint-file", str(remote_sidecar["endpoint"]),
             "--esm2", str(remote_sidecar["models"] / ESM2_FILE),
             "--dnabert-s", str(remote_sidecar["models"] / DNABERT_DIR),
             "--protein", str(tmp_path / "x.faa"), "--esm-out", str(tmp_path / "x.npz"),
             "--silent-timeout", "3", "--tries", "2"]
    reached = on_node(CPU_NODE, *embed)
    assert reached.returncode == 0 and (tmp_path / "x.npz").exists(), reached.stderr
    (tmp_path / "x.npz").unlink()
    nodes("cut", CPU_NODE, host)
    try:
        start = time.monotonic()
        proc = on_node(CPU_NODE, *embed)
        took = time.monotonic() - start
    finally:
        nodes("uncut", CPU_NODE, host)
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("srun: ")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    line = lines[0]
    assert f"no TCP connection to {host} port {port} from {CPU_NODE}" in line, line
    assert line.endswith(f"check that {host} is up and reachable from {CPU_NODE}, and that no firewall drops "
                         f"port {port}; then rerun"), line
    assert took < 3 * 2 + 30 and not (tmp_path / "x.npz").exists(), (took, line)


NO_SECRET_CLIENTS = r"""
import json, sys, zmq
from sidecar import auth, protocol
from sidecar.client import SidecarClient, SidecarError
endpoint_file, other_secret = sys.argv[1], sys.argv[2]
out = {}
auth.create(other_secret)  # a secret of its own: not the sidecar's
client = SidecarClient(endpoint_file, secret_file=other_secret, silent_timeout=3, tries=1)
try:
    out["curve_wrong_key"] = client.ping(timeout=5)
except SidecarError as exc:
    out["curve_wrong_key_error"] = str(exc)
finally:
    client.close()
endpoint = json.load(open(endpoint_file))["endpoint"]
ctx = zmq.Context()
plain = ctx.socket(zmq.DEALER)  # no CURVE at all
plain.setsockopt(zmq.LINGER, 0)
plain.connect(endpoint)
plain.send_multipart(protocol.embed("esm2", ["x_1F"], ["MKV"]))
plain.send_multipart(protocol.ping())
out["plain_got"] = len(plain.poll(4000) and plain.recv_multipart() or [])
plain.close()
ctx.term()
print(json.dumps(out))
"""


def test_a_client_on_another_node_without_the_curve_secret_gets_nothing(remote_sidecar, tmp_path):
    log = remote_sidecar["workdir"] / "server.log"
    before = log.read_text()
    proc = on_node(CPU_NODE, sys.executable, "-c", NO_SECRET_CLIENTS, str(remote_sidecar["endpoint"]),
                   str(tmp_path / "other.secret"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "curve_wrong_key" not in out and "refused the connection" in out["curve_wrong_key_error"], out
    assert out["plain_got"] == 0, out
    # the sidecar never saw the embed request of the client without CURVE (nor any other)
    new = log.read_text()[len(before):]
    assert " embed " not in new, new
    # while a client that holds the secret, on the same node, is answered
    ok = on_node(CPU_NODE, sys.executable, "-m", "sidecar", "status", "--endpoint-file",
                 str(remote_sidecar["endpoint"]))
    assert ok.returncode == 0 and json.loads(ok.stdout)["state"] == "ready", ok.stderr
