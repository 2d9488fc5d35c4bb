# Shared by deploy/*.sh: package setup, the persistent build directory,
# and the build itself. Source it; do not run it.

BERTH_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The Debian packages berth needs to build, test and run.
BERTH_PACKAGES="libclang-dev g++ libseccomp-dev busybox-static iproute2 util-linux ca-certificates openssl skopeo umoci runc"

berth_require_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "berth: $0 must run as root (it creates namespaces, overlay mounts and cgroups)" >&2
        exit 1
    fi
}

# Installs whichever of the packages named after the apt-get options
# (up to "--") is missing; does nothing if none is.
#   berth_apt_install [APT_OPTION...] -- PACKAGE...
berth_apt_install() {
    local opts="" missing=""
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do opts="$opts $1"; shift; done
    shift
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
            missing="$missing $p"
        fi
    done
    if [ -n "$missing" ]; then
        echo "==> installing Debian packages:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q $opts $missing \
            || { apt-get update -q && apt-get install -y -q $opts $missing; }
    fi
}

# Installs whichever of BERTH_PACKAGES is missing, and finds cargo.
berth_install_packages() {
    berth_apt_install -- $BERTH_PACKAGES
    if ! command -v cargo >/dev/null 2>&1; then
        for d in "$HOME/.cargo/bin" /root/.cargo/bin; do
            [ -x "$d/cargo" ] && export PATH="$d:$PATH" && break
        done
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "berth: cargo is missing: install Rust with rustup (https://rustup.rs), then run this again" >&2
        exit 1
    fi
}

# For the cgroup v2 test (chaos-tests/tests/cgroup_v2.rs): qemu, cpio, and
# Debian's kernel with its overlay module in /var/cache/berth/vm, taken
# from the linux-image package without installing it. Idempotent.
BERTH_VM_DIR=/var/cache/berth/vm
berth_install_vm() {
    berth_apt_install --no-install-recommends -- qemu-system-x86 cpio
    if [ -f "$BERTH_VM_DIR/vmlinuz" ] && [ -f "$BERTH_VM_DIR/overlay.ko" ]; then
        return
    fi
    echo "==> fetching Debian's kernel for the cgroup v2 guest into $BERTH_VM_DIR"
    local pkg tmp
    pkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')"
    if [ -z "$pkg" ]; then
        apt-get update -q
        pkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')"
    fi
    tmp="$(mktemp -d)"
    chmod 755 "$tmp"
    chown _apt "$tmp" 2>/dev/null || true
    (cd "$tmp" && apt-get download -q "$pkg" && dpkg-deb -x ./*.deb x)
    mkdir -p "$BERTH_VM_DIR"
    cp "$tmp"/x/boot/vmlinuz-* "$BERTH_VM_DIR/vmlinuz"
    find "$tmp/x/lib/modules" -name overlay.ko -exec cp {} "$BERTH_VM_DIR/overlay.ko" \;
    rm -rf "$tmp"
    [ -f "$BERTH_VM_DIR/overlay.ko" ] || { echo "berth: no overlay.ko in $pkg" >&2; exit 1; }
}

# One persistent target directory for every script and CI run, so that
# only the first build pays for rocksdb.
berth_target_dir() {
    if [ -z "${CARGO_TARGET_DIR:-}" ]; then
        if [ -d /var/cache ]; then
            export CARGO_TARGET_DIR=/var/cache/berth/target
        else
            export CARGO_TARGET_DIR="$BERTH_REPO/target"
        fi
    fi
    mkdir -p "$CARGO_TARGET_DIR"
}

berth_build() {
    berth_target_dir
    echo "==> building berth (cargo build --workspace --bins, into $CARGO_TARGET_DIR)"
    (cd "$BERTH_REPO" && cargo build --locked --workspace --bins)
    BERTH_BIN="$CARGO_TARGET_DIR/debug"
}

# Writes a busybox rootfs tarball from Debian's busybox-static.
berth_busybox_tar() {
    local out="$1" root
    root="$(mktemp -d)"
    mkdir -p "$root/bin" "$root/etc" "$root/root" "$root/tmp"
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
    tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$out" .
    rm -rf "$root"
}
