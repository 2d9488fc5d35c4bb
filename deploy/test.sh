#!/usr/bin/env bash
# Runs every test of berth: unit tests, openraft's storage suite, and the
# cluster tests with real servers, agents and containers (as root, each in
# namespaces of its own). Installs what it needs and builds first.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

berth_require_root
berth_install_packages
# Debian's docker, which the isolation test holds berth's verdicts against.
berth_apt_install --no-install-recommends -- docker.io
berth_install_vm
berth_build
echo "==> cargo test --workspace"
cd "$BERTH_REPO"
cargo test --locked --workspace
