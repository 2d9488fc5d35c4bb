#!/usr/bin/env bash
# Stands up a berth cluster of separate test hosts on this machine: each
# host a network namespace of its own with its own address on a private
# bridge (10.214.0.0/24, reached only from inside the namespaces), the
# servers and agents joined to each other with mutual TLS and join tokens,
# as they would be on separate machines (DESIGN.md, Testing).
#
#   deploy/hosts.sh up [SERVERS [AGENTS]]   three servers and three agents by default
#   deploy/hosts.sh cli ARGS...             runs the berth CLI on the "cli" host
#   deploy/hosts.sh kill HOST               kills every process of a host (s1, a2, ...)
#   deploy/hosts.sh start HOST              starts a host's server or agent again
#   deploy/hosts.sh status                  the hosts, their addresses and processes
#   deploy/hosts.sh down                    stops everything and removes the hosts
#
# Hosts: s1..sN (servers, 10.214.0.11 and up, port 7420), a1..aM (agents,
# 10.214.0.31 and up), cli (10.214.0.2). State (data dirs, logs, the admin
# credential) in $BERTH_HOSTS_STATE (default /var/lib/berth/hosts).
# Binaries from $BERTH_BIN if set, else a debug build of this checkout.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

STATE="${BERTH_HOSTS_STATE:-/var/lib/berth/hosts}"
SWITCH=berth-sw
NET=10.214.0
PORT=7420

ns_of() { echo "berth-$1"; }
addr_of() {
    case "$1" in
        cli) echo "$NET.2" ;;
        s*) echo "$NET.$((10 + ${1#s}))" ;;
        a*) echo "$NET.$((30 + ${1#a}))" ;;
        *) echo "hosts.sh: no host $1 (s1.., a1.., cli)" >&2; exit 2 ;;
    esac
}
on() { local host="$1"; shift; nsenter --net="/run/netns/$(ns_of "$host")" -- "$@"; }

bins() {
    if [ -z "${BERTH_BIN:-}" ]; then
        berth_install_packages
        berth_build
    fi
    BERTH="$BERTH_BIN/berth"
}

add_host() {
    local host="$1" ns port
    ns="$(ns_of "$host")"
    port="v-$host"
    [ -e "/run/netns/$ns" ] && return 0
    ip netns add "$ns"
    ip link add "$port" netns "$SWITCH" type veth peer name eth0 netns "$ns"
    ip -n "$SWITCH" link set "$port" master br0 up
    ip -n "$ns" addr add "$(addr_of "$host")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
}

cli() { on cli env BERTH_CONFIG="$STATE/admin.conf" BERTH_HOST="$(servers)" "$BERTH" "$@"; }

servers() { cat "$STATE/servers"; }

start_host() {
    local host="$1" addr
    addr="$(addr_of "$host")"
    case "$host" in
        s*)
            local data="$STATE/$host" flags=()
            if [ ! -d "$data/tls" ]; then
                if [ "$host" = s1 ]; then
                    flags=(--bootstrap)
                else
                    flags=(--join "$(addr_of s1):$PORT" --token "$(cli cluster join-token server -q)")
                fi
            fi
            on "$host" setsid "$BERTH_BIN/berth-server" --data-dir "$data" \
                --listen "$addr:$PORT" "${flags[@]}" \
                >>"$STATE/$host.log" 2>&1 </dev/null &
            if [ "$host" = s1 ] && [ ! -f "$STATE/admin.conf" ]; then
                for _ in $(seq 1 300); do [ -f "$data/admin.conf" ] && break; sleep 0.1; done
                [ -f "$data/admin.conf" ] || { echo "hosts.sh: s1 wrote no admin credential; see $STATE/s1.log" >&2; exit 1; }
                # The credential names s1 only; the CLI is given every server.
                cp "$data/admin.conf" "$STATE/admin.conf"
            fi
            ;;
        a*)
            local data="$STATE/$host" token=""
            [ -f "$data/tls/cert.pem" ] || token="$(cli cluster join-token agent -q)"
            on "$host" env BERTH_TOKEN="$token" setsid "$BERTH_BIN/berth-agent" --data-dir "$data" \
                --server "$(servers)" --name "$host" \
                >>"$STATE/$host.log" 2>&1 </dev/null &
            ;;
    esac
}

wait_for() {
    local what="$1"; shift
    for _ in $(seq 1 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "hosts.sh: timed out waiting for $what" >&2
    return 1
}

members() { [ "$(cli cluster status 2>/dev/null | grep -cE ' (leader|voter) ')" -ge "$1" ]; }
ready() { [ "$(cli node ls 2>/dev/null | grep -c ' ready ')" -ge "$1" ]; }

up() {
    local n_servers="${1:-3}" n_agents="${2:-3}"
    berth_require_root
    bins
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    if [ ! -e "/run/netns/$SWITCH" ]; then
        mkdir -p /run/netns
        ip netns add "$SWITCH"
        ip -n "$SWITCH" link add br0 type bridge
        ip -n "$SWITCH" link set br0 up
    fi
    add_host cli
    local list=""
    for i in $(seq 1 "$n_servers"); do
        add_host "s$i"
        list="${list:+$list,}$(addr_of "s$i"):$PORT"
    done
    echo "$list" > "$STATE/servers"
    echo "==> server s1 bootstraps the cluster"
    start_host s1
    wait_for "s1 to answer" cli cluster status
    for i in $(seq 2 "$n_servers"); do
        echo "==> server s$i joins with the server token"
        start_host "s$i"
        wait_for "s$i to join" members "$i"
    done
    for i in $(seq 1 "$n_agents"); do
        add_host "a$i"
        echo "==> agent a$i joins with the agent token"
        start_host "a$i"
    done
    wait_for "every node to be ready" ready "$n_agents"
    cli cluster status
    cli node ls
    cat <<MSG

The cluster runs on test hosts (state and logs in $STATE):
  deploy/hosts.sh cli ps -a           the CLI, on the "cli" host
  deploy/hosts.sh kill s1             a host dies (every process in it)
  deploy/hosts.sh down                everything stops, the hosts go
MSG
}

kill_host() {
    local ns pids
    ns="$(ns_of "$1")"
    [ -e "/run/netns/$ns" ] || return 0
    # The processes of the host's network namespace: the ones this script
    # started there (and their shims and containers).
    pids="$(ip netns pids "$ns" || true)"
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    for _ in $(seq 1 50); do
        [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && return 0
        sleep 0.1
    done
}

# The hosts that exist (their namespaces), one name a line.
hosts() {
    local f ns
    for f in /run/netns/berth-*; do
        [ -e "$f" ] || continue
        ns="$(basename "$f")"
        [ "$ns" = "$SWITCH" ] || echo "${ns#berth-}"
    done
}

down() {
    berth_require_root
    local host
    for host in $(hosts); do
        kill_host "$host"
        ip netns del "$(ns_of "$host")"
    done
    [ -e "/run/netns/$SWITCH" ] && ip netns del "$SWITCH"
    echo "==> the test hosts are gone (their state stays in $STATE; remove it to start over)"
}

status() {
    local host
    for host in $(hosts); do
        printf '%-5s %-14s %s\n' "$host" "$(addr_of "$host")" "$(ip netns pids "$(ns_of "$host")" | tr '\n' ' ')"
    done
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) down ;;
    cli) shift; bins >/dev/null; cli "$@" ;;
    kill) kill_host "${2:?which host}" ;;
    start) bins >/dev/null; start_host "${2:?which host}" ;;
    status) status ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
