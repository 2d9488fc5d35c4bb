#!/usr/bin/env bash
# The long runs that stay out of CI: the log tests at full size (a state of
# 200 MiB of logs and 20,000 tasks that a fourth server catches up on by a
# chunked snapshot). As root; installs what it needs and builds first.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

berth_require_root
berth_install_packages
berth_build
echo "==> cargo test -p berth-chaos --test logs (BERTH_SOAK=1)"
cd "$BERTH_REPO"
BERTH_SOAK=1 cargo test --locked -p berth-chaos --test logs -- --test-threads 1
