#!/usr/bin/env bash
# The multi-host part of the CI cluster (.ci/slurm/setup.sh): compute nodes on this machine, each in its own
# network and UTS namespace, for tests/test_slurm_multihost.py. A node has its own host name, its own address
# (a veth pair to the bridge vnfbr0 on the host) and its own slurmd with its own spool directory. The nodes
# share the host's mount namespace, so every path (the repository, the tests' scratch directories, munge's
# socket) is the same file on every node, as with NFS. slurmctld and munged run on the host, which the nodes
# reach at the bridge address (vnf-ctl). Every name resolves on every node through /etc/hosts.
#
#   nodes.sh check           can namespaces, veth pairs and a bridge be made here? (exit 0 if so)
#   nodes.sh net-up          bridge, namespaces, addresses, /etc/hosts entries
#   nodes.sh start NODE      its slurmd, inside its namespaces
#   nodes.sh lose NODE       the node disappears: every process in its namespace is killed (its slurmd,
#                            its jobs), and its address is taken down
#   nodes.sh restore NODE    its address back, its slurmd started again, the node resumed in SLURM
#   nodes.sh cut FROM TO     traffic from FROM to TO is dropped (a blackhole route in FROM's namespace)
#   nodes.sh uncut FROM TO
#   nodes.sh net-down        every process in the namespaces killed, namespaces, bridge, hosts entries removed
set -uo pipefail

STATE=${VIRNUCFLOW_SLURM_STATE:-/var/lib/virnucflow-slurm}
BRIDGE=vnfbr0
NET=10.213.0
CTL_NAME=vnf-ctl
CTL_ADDR=$NET.1
NODES="vnf-node1 vnf-node2 vnf-node3"
HOSTS_MARK="# virnucflow-ci-slurm"

addr_of() { # addr_of NODE: vnf-node1 -> 10.213.0.11
    echo "$NET.$((10 + ${1##*node}))"
}

veth_of() { echo "vnfv${1##*node}"; } # the host's end of the node's veth pair

in_node() { # in_node NODE COMMAND...: run it in the node's network and UTS namespaces (the host's mounts)
    local node=$1
    shift
    nsenter --net="/run/netns/$node" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$node" "$@"
}

kill_pids() { # kill_pids NODE: every process in the node's network namespace (slurmd, slurmstepd, jobs)
    local pids
    pids=$(ip netns pids "$1" 2>/dev/null)
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    for _ in $(seq 1 50); do
        [ -z "$(ip netns pids "$1" 2>/dev/null)" ] && return 0
        sleep 0.1
    done
}

hosts_up() {
    hosts_down
    {
        echo "$CTL_ADDR $CTL_NAME $HOSTS_MARK"
        for node in $NODES; do echo "$(addr_of "$node") $node $HOSTS_MARK"; done
    } >> /etc/hosts
}

hosts_down() { # /etc/hosts may be a bind mount: rewritten in place, never replaced
    local kept
    kept=$(grep -v -- "$HOSTS_MARK" /etc/hosts)
    printf '%s\n' "$kept" > /etc/hosts
}

case "${1:-}" in
    check)
        name=vnfcheck$$
        ip netns add "$name" 2>/dev/null || exit 1
        ok=0
        ip link add "$name" type veth peer name "${name}b" 2>/dev/null || ok=1
        ip link del "$name" 2>/dev/null
        nsenter --net="/run/netns/$name" unshare --uts true 2>/dev/null || ok=1
        ip netns del "$name"
        command -v nsenter >/dev/null || ok=1
        exit $ok
        ;;
    net-up)
        "$0" net-down
        ip link add "$BRIDGE" type bridge &&
            ip addr add "$CTL_ADDR/24" dev "$BRIDGE" &&
            ip link set "$BRIDGE" up || exit 1
        for node in $NODES; do
            veth=$(veth_of "$node")
            ip netns add "$node" &&
                ip link add "$veth" type veth peer name eth0 netns "$node" &&
                ip link set "$veth" master "$BRIDGE" &&
                ip link set "$veth" up &&
                ip -n "$node" link set lo up &&
                ip -n "$node" addr add "$(addr_of "$node")/24" dev eth0 &&
                ip -n "$node" link set eth0 up || exit 1
        done
        hosts_up
        ;;
    start)
        node=$2
        mkdir -p "$STATE/slurmd/$node"
        in_node "$node" slurmd -N "$node"
        ;;
    lose)
        node=$2
        kill_pids "$node"
        ip -n "$node" link set eth0 down
        ;;
    restore)
        node=$2
        kill_pids "$node"
        ip -n "$node" link set eth0 up &&
            ip -n "$node" addr replace "$(addr_of "$node")/24" dev eth0 &&
            "$0" start "$node" || exit 1
        for _ in $(seq 1 60); do
            state=$(timeout 10 sinfo -h -n "$node" -o %T 2>/dev/null)
            case "$state" in
                idle | mixed | allocated) exit 0 ;; # back, and maybe given a job at once
                down* | drain* | fail* | "") scontrol update nodename="$node" state=resume 2>/dev/null ;;
            esac
            sleep 0.5
        done
        echo "nodes.sh: $node did not come back (sinfo: $(sinfo -h -n "$node" -o %T 2>&1))" >&2
        exit 1
        ;;
    cut) ip -n "$2" route add blackhole "$(addr_of "$3")/32" ;;
    uncut) ip -n "$2" route del blackhole "$(addr_of "$3")/32" ;;
    net-down)
        for node in $NODES; do
            [ -e "/run/netns/$node" ] || continue
            kill_pids "$node"
            ip netns del "$node"
        done
        for node in $NODES; do ip link del "$(veth_of "$node")" 2>/dev/null; done
        ip link del "$BRIDGE" 2>/dev/null
        hosts_down
        ;;
    nodes) echo "$NODES" ;;
    ctl) echo "$CTL_NAME $CTL_ADDR" ;;
    *)
        echo "usage: nodes.sh check|net-up|start NODE|lose NODE|restore NODE|cut FROM TO|uncut FROM TO|net-down" >&2
        exit 2
        ;;
esac
