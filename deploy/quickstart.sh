#!/usr/bin/env bash
# Sets up and runs a local berth cluster (one server, one agent) with its
# state in one directory, makes a busybox image, and runs a container in
# it. Safe to run again: a running cluster is reused.
#
#   sudo deploy/quickstart.sh            state in /var/lib/berth/quickstart
#   BERTH_STATE=/some/dir deploy/quickstart.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"

berth_require_root
berth_install_packages
berth_build

STATE="${BERTH_STATE:-/var/lib/berth/quickstart}"
ADDR="${BERTH_ADDR:-127.0.0.1:7420}"
mkdir -p "$STATE"
BERTH="$BERTH_BIN/berth"
export BERTH_HOST="$ADDR"

# True if the pid file names a live berth process of this state dir (its
# binary may have been rebuilt since, so the command line is what counts).
alive() {
    local pidfile="$STATE/$1.pid"
    [ -f "$pidfile" ] || return 1
    local pid
    pid="$(cat "$pidfile")"
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "$1 --data-dir $STATE/"
}

if alive berth-server; then
    echo "==> berth-server already running (pid $(cat "$STATE/berth-server.pid"))"
else
    bootstrap=""
    [ -d "$STATE/server" ] || bootstrap="--bootstrap"
    if [ -d "$STATE/server" ] && [ ! -d "$STATE/server/tls" ]; then
        echo "berth: $STATE/server is from a berth without TLS; remove $STATE (after deploy/stop.sh) to start over" >&2
        exit 1
    fi
    echo "==> starting berth-server on $ADDR (data in $STATE/server)"
    setsid "$BERTH_BIN/berth-server" --data-dir "$STATE/server" --listen "$ADDR" $bootstrap \
        >>"$STATE/server.log" 2>&1 < /dev/null &
    echo $! > "$STATE/berth-server.pid"
fi
# Every connection is mutual TLS: the server writes the admin credential
# at its bootstrap, and the CLI finds it as the "quickstart" context
# (~/.berth/config, or $BERTH_CONFIG_DIR/config).
echo "==> waiting for the admin credential ($STATE/server/admin.conf)"
for _ in $(seq 1 300); do
    [ -f "$STATE/server/admin.conf" ] && break
    sleep 0.1
done
if [ ! -f "$STATE/server/admin.conf" ]; then
    echo "berth: the server wrote no admin credential; see $STATE/server.log" >&2
    exit 1
fi
"$BERTH" context import quickstart "$STATE/server/admin.conf" >/dev/null
"$BERTH" context use quickstart >/dev/null
if alive berth-agent; then
    echo "==> berth-agent already running (pid $(cat "$STATE/berth-agent.pid"))"
else
    echo "==> starting berth-agent (data in $STATE/agent)"
    token=""
    if [ ! -f "$STATE/agent/tls/cert.pem" ]; then
        # The first start joins with the cluster's agent token.
        for _ in $(seq 1 100); do
            token="$("$BERTH" cluster join-token agent -q 2>/dev/null)" && break
            sleep 0.1
        done
    fi
    BERTH_TOKEN="$token" setsid "$BERTH_BIN/berth-agent" --data-dir "$STATE/agent" --server "$ADDR" \
        >>"$STATE/agent.log" 2>&1 < /dev/null &
    echo $! > "$STATE/berth-agent.pid"
fi

echo "==> waiting for the node to be ready"
for _ in $(seq 1 300); do
    if "$BERTH" node ls 2>/dev/null | grep -q " ready "; then
        break
    fi
    sleep 0.1
done
if ! "$BERTH" node ls 2>/dev/null | grep -q " ready "; then
    echo "berth: the node did not become ready; see $STATE/server.log and $STATE/agent.log" >&2
    exit 1
fi

if ! "$BERTH" images | grep -q "^busybox "; then
    echo "==> making a busybox image from Debian's busybox-static"
    berth_busybox_tar "$STATE/busybox.tar"
    "$BERTH" import "$STATE/busybox.tar" busybox
fi

echo "==> berth run busybox echo hello"
"$BERTH" run busybox echo hello
echo "==> berth ps -a"
"$BERTH" ps -a | head -n 6

cat <<MSG

The cluster is running (server and agent logs in $STATE).
Use it:
  export PATH="$BERTH_BIN:\$PATH"
  berth run busybox sh -c 'echo hi from \$(hostname)'
  berth run -d --name web busybox sh -c 'while true; do date; sleep 1; done'
  berth logs -f web
  berth ps -a
  berth images
Stop it:
  $BERTH_REPO/deploy/stop.sh      (containers and images stay in $STATE)
MSG
