#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tests/test_slurm.py: Debian's slurm-wlm 22.05 and munge,
# configured for localhost, run as root. `.ci/run` starts it before the tests and stops it afterwards
# (.ci/slurm/teardown.sh). A developer can run both by hand (as root) to run the SLURM tests locally.
#
# Settings that work here (../shared/NOTES.md §4): proctrack/linuxproc, task/none, no cgroup.conf,
# no accounting database (so `sacct` has no data: the profile's tests query `squeue`), and the job
# completion log jobcomp/filetxt, which is the record that the tests read to prove SLURM ran the jobs.
# The node has one stand-in GPU (a GRES backed by /dev/null), so that the SLURM profile's GPU request
# for the sidecar job (--gpus=1) is really scheduled: SLURM sets CUDA_VISIBLE_DEVICES for it, and
# only one job at a time holds it. The sidecar itself runs on the CPU (the tests use `device: cpu`).
set -euo pipefail

STATE=${VIRNUCFLOW_SLURM_STATE:-/var/lib/virnucflow-slurm}
CONF=/etc/slurm/slurm.conf

say() { echo "slurm setup: $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "slurm setup: must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# A previous run's daemons (ours, by their pid files) are stopped first: this script is idempotent.
"$(dirname "$0")/teardown.sh" --quiet || true

mkdir -p "$STATE"/{ctld,slurmd,log} /etc/slurm
rm -f "$STATE"/log/jobcomp.log # the state is cleared below, so job ids start again at 1
rm -rf "$STATE"/ctld/* "$STATE"/slurmd/*

# The node as slurmd sees it: real CPUs and memory, so that SLURM's own accounting is honest.
read -r CPUS SOCKETS CORES THREADS MEM < <(
    slurmd -C | head -1 | tr ' ' '\n' | awk -F= '
        $1=="CPUs"{c=$2} $1=="SocketsPerBoard"{s=$2} $1=="CoresPerSocket"{k=$2}
        $1=="ThreadsPerCore"{t=$2} $1=="RealMemory"{m=$2}
        END{print c, s, k, t, m}')
MEM=$((MEM * 95 / 100)) # a margin: a node whose memory is below its configured RealMemory is drained

cat > "$CONF" <<CONF
# Written by virnucflow's .ci/slurm/setup.sh: a one-node cluster on localhost for the tests.
ClusterName=virnucflow-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
ReturnToService=2
MpiDefault=none
# fast teardown of jobs at their time limit; finished jobs stay visible to squeue for 10 minutes
KillWait=5
OverTimeLimit=0
MinJobAge=600
InactiveLimit=0
GresTypes=gpu
NodeName=localhost CPUs=$CPUS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

echo "NodeName=localhost Name=gpu File=/dev/null  # a stand-in GPU: see .ci/slurm/setup.sh" > /etc/slurm/gres.conf

# munge: its own user, a key made by the package (or here), its socket directory
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
# a socket left by a munged that was killed (not stopped) would keep a new one from starting
if [ "$(cat "/proc/$(cat /run/munge/munged.pid 2>/dev/null || echo 0)/comm" 2>/dev/null)" != munged ]; then
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
fi
munge -n | unmunge >/dev/null

slurmctld -c
slurmd -N localhost

say "waiting for the node"
for _ in $(seq 1 120); do
    for daemon in slurmctld slurmd; do
        if ! kill -0 "$(cat "$STATE/$daemon.pid" 2>/dev/null || echo 0)" 2>/dev/null; then
            echo "slurm setup: $daemon is not running:" >&2
            tail -5 "$STATE/log/$daemon.log" >&2 || true
            exit 1
        fi
    done
    state=$(timeout 10 sinfo -h -n localhost -o %T 2>/dev/null || true)
    case "$state" in
        idle) break ;;
        down* | drain* | fail*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
done
if [ "$(timeout 10 sinfo -h -n localhost -o %T 2>/dev/null)" != idle ]; then
    echo "slurm setup: the node did not become idle:" >&2
    sinfo -N -l >&2 || true
    tail -20 "$STATE"/log/slurmctld.log "$STATE"/log/slurmd.log >&2 || true
    exit 1
fi
say "ready: $(sinfo -h -N -o '%N %T cpus=%c mem=%m')"
