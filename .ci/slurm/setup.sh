#!/usr/bin/env bash
# A real SLURM on this machine, for tests/test_slurm.py and tests/test_slurm_multihost.py: Debian's slurm-wlm
# 22.05 and munge, run as root. This machine itself is the node of partition debug, the default: `localhost`,
# or, when there are more nodes, its host name (SLURM takes `localhost` for the only node).
# Where network namespaces work, three more nodes, vnf-node1..3, each in its own network and UTS namespace
# (.ci/slurm/nodes.sh), make the cluster multi-host: partition gpu (vnf-node1, then vnf-node2, each with a
# stand-in GPU) and partition cpu (vnf-node3). Where they do not, the log says so and the cluster is the one
# node; the multi-host tests then skip (and fail under CI=true). `.ci/run` starts it before the tests and stops it afterwards
# (.ci/slurm/teardown.sh). A developer can run both by hand (as root) to run the SLURM tests locally.
#
# Settings that work in a container without systemd or cgroup control (CI's machine): proctrack/linuxproc,
# task/none, no cgroup.conf,
# no accounting database (so `sacct` has no data: the profile's tests query `squeue`), and the job
# completion log jobcomp/filetxt, which is the record that the tests read to prove SLURM ran the jobs.
# The node has one stand-in GPU (a GRES backed by /dev/null), so that the SLURM profile's GPU request
# for the sidecar job (--gpus=1) is really scheduled: SLURM sets CUDA_VISIBLE_DEVICES for it, and
# only one job at a time holds it. The sidecar itself runs on the CPU (the tests use `device: cpu`).
set -euo pipefail

STATE=${VIRNUCFLOW_SLURM_STATE:-/var/lib/virnucflow-slurm}
CONF=/etc/slurm/slurm.conf

say() { echo "slurm setup: $*"; }
NODES_SH="$(dirname "$0")/nodes.sh"

if [ "$(id -u)" != 0 ]; then
    echo "slurm setup: must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
if ! command -v ip >/dev/null || ! command -v nsenter >/dev/null; then # the multi-host nodes' network
    say "installing iproute2 and util-linux"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 util-linux >/dev/null
fi

# A previous run's daemons (ours, by their pid files) are stopped first: this script is idempotent.
"$(dirname "$0")/teardown.sh" --quiet || true

# The multi-host nodes' network: the controller listens on the bridge address too (vnf-ctl)
MULTIHOST=
if bash "$NODES_SH" check; then
    bash "$NODES_SH" net-up && MULTIHOST=$(bash "$NODES_SH" nodes)
fi
if [ -n "$MULTIHOST" ]; then
    read -r _ CTL_ADDR < <(bash "$NODES_SH" ctl)
    CTL_HOST="$(hostname -s)($CTL_ADDR)" # its own name (slurmctld checks it), the address the nodes reach
    HOST_NODE="$(hostname -s) NodeAddr=127.0.0.1"
else
    say "network namespaces cannot be made here (ip netns add, veth, unshare --uts): one node only"
    CTL_HOST=localhost
    HOST_NODE=localhost
fi

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
SlurmctldHost=$CTL_HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a batch job requeued after its node failed starts again after this (default 120 s; the multi-host tests)
AuthInfo=cred_expire=30
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
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
NodeName=$HOST_NODE CPUs=$CPUS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=${HOST_NODE%% *} Default=YES MaxTime=INFINITE State=UP
CONF
echo "NodeName=${HOST_NODE%% *} Name=gpu File=/dev/null  # a stand-in GPU: see .ci/slurm/setup.sh" > /etc/slurm/gres.conf

if [ -n "$MULTIHOST" ]; then
    # vnf-node1 and vnf-node2 hold a stand-in GPU each (the lower weight is used first), vnf-node3 none
    node() { # node NAME EXTRA...
        local name=$1
        shift
        echo "NodeName=$name CPUs=$CPUS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES" \
            "ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN $*" >> "$CONF"
    }
    node vnf-node1 Gres=gpu:1 Weight=1
    node vnf-node2 Gres=gpu:1 Weight=2
    node vnf-node3 Weight=3
    cat >> "$CONF" <<CONF
PartitionName=gpu Nodes=vnf-node1,vnf-node2 MaxTime=INFINITE State=UP
PartitionName=cpu Nodes=vnf-node3 MaxTime=INFINITE State=UP
CONF
    for name in vnf-node1 vnf-node2; do
        echo "NodeName=$name Name=gpu File=/dev/null" >> /etc/slurm/gres.conf
    done
fi

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
HOST_NODE=${HOST_NODE%% *}
mkdir -p "$STATE/slurmd/$HOST_NODE"
slurmd -N "$HOST_NODE"
for name in $MULTIHOST; do
    bash "$NODES_SH" start "$name"
done

say "waiting for the nodes"
for node in $HOST_NODE $MULTIHOST; do
    for _ in $(seq 1 120); do
        for daemon in slurmctld "slurmd-$node"; do
            if ! kill -0 "$(cat "$STATE/$daemon.pid" 2>/dev/null || echo 0)" 2>/dev/null; then
                echo "slurm setup: $daemon is not running:" >&2
                tail -5 "$STATE/log/$daemon.log" >&2 || true
                exit 1
            fi
        done
        state=$(timeout 10 sinfo -h -n "$node" -o %T 2>/dev/null || true)
        case "$state" in
            idle) break ;;
            down* | drain* | fail*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    if [ "$(timeout 10 sinfo -h -n "$node" -o %T 2>/dev/null)" != idle ]; then
        echo "slurm setup: the node $node did not become idle:" >&2
        sinfo -N -l >&2 || true
        tail -20 "$STATE"/log/slurmctld.log "$STATE/log/slurmd-$node.log" >&2 || true
        exit 1
    fi
done
say "ready: $(sinfo -h -N -o '%N %P %T cpus=%c mem=%m' | tr '\n' ';')"
