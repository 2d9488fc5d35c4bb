#!/usr/bin/env bash
# Stops the local cluster that deploy/quickstart.sh started. Its state
# stays; quickstart.sh starts it again.
set -euo pipefail
STATE="${BERTH_STATE:-/var/lib/berth/quickstart}"
for p in berth-agent berth-server; do
    f="$STATE/$p.pid"
    if [ -f "$f" ]; then
        pid="$(cat "$f")"
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "$p --data-dir $STATE/"; then
            kill "$pid"
            for _ in $(seq 1 50); do
                [ -d "/proc/$pid" ] || break
                sleep 0.1
            done
            echo "stopped $p (pid $pid)"
        fi
        rm -f "$f"
    fi
done
