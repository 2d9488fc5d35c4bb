#!/usr/bin/env bash
# Stops the local cluster that deploy/quickstart.sh started. Its state
# stays; quickstart.sh starts it again.
set -euo pipefail
STATE="${BERTH_STATE:-/var/lib/berth/quickstart}"
for p in berth-agent berth-server; do
    f="$STATE/$p.pid"
    if [ -f "$f" ]; then
        pid="$(cat "$f")"
        if [ -d "/proc/$pid" ] && readlink "/proc/$pid/exe" | grep -q "/$p\$"; then
            kill "$pid"
            echo "stopped $p (pid $pid)"
        fi
        rm -f "$f"
    fi
done
