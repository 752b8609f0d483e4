#!/usr/bin/env bash
# Stop the SLURM that .ci/slurm/setup.sh started: cancel whatever jobs are left, then stop each slurmd,
# slurmctld and munged, each by the pid in its own pid file (nothing is killed by name), and remove the
# multi-host nodes' namespaces, bridge and /etc/hosts entries (.ci/slurm/nodes.sh net-down).
set -uo pipefail

STATE=${VIRNUCFLOW_SLURM_STATE:-/var/lib/virnucflow-slurm}
quiet=${1:-}

stop_pidfile() { # stop_pidfile NAME FILE
    local pid
    [ -s "$2" ] || return 0
    pid=$(cat "$2")
    # only if that pid is still the daemon: after a reboot or a killed session it may be anyone's
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        [ "$quiet" = --quiet ] || echo "slurm teardown: stopped $1 ($pid)"
    fi
    rm -f "$2"
}

if [ -s "$STATE/slurmctld.pid" ] && command -v scancel >/dev/null; then
    timeout 20 scancel --full --quiet --user root 2>/dev/null || true
    for _ in $(seq 1 50); do
        [ -z "$(timeout 10 squeue -h -t R,PD,CG 2>/dev/null)" ] && break
        sleep 0.2
    done
fi
for pidfile in "$STATE"/slurmd-*.pid "$STATE/slurmd.pid"; do
    [ -e "$pidfile" ] && stop_pidfile slurmd "$pidfile"
done
stop_pidfile slurmctld "$STATE/slurmctld.pid"
stop_pidfile munged /run/munge/munged.pid
bash "$(dirname "$0")/nodes.sh" net-down
exit 0
