#!/usr/bin/env bash
# Prepare a Debian/Ubuntu host to build, run and test rlguard.
#
#   scripts/setup.sh          system packages, kernel headers for bcc, tracefs,
#                             cgroup v2, and the venv at <repo>/.venv
#   scripts/setup.sh --test   the same, plus the tools the test suite drives
#
# Idempotent: a second run installs nothing, touches no network and takes a
# second or two. Called by `make setup`, `make run`, `make test`.
set -euo pipefail

readonly BASE_PACKAGES=(
    python3 python3-venv python3-pip python3-bpfcc
    iproute2 ca-certificates make gcc libc6-dev
)
readonly TEST_PACKAGES=(
    openssh-server openssh-client liburing-dev tmux bpftrace
    procps util-linux file shellcheck rsync git curl socat netcat-openbsd
    postgresql openssl gnutls-bin
    php-cli ruby ncat netcat-traditional putty-tools autossh sshuttle redis-tools postgresql-client
)
readonly SYS_PYTHON=/usr/bin/python3
readonly STATE_DIR=/var/lib/rlguard
readonly HEADERS_MARKER=$STATE_DIR/headers-fallback
readonly APT_LISTS=/var/lib/apt/lists
readonly APT_STAMP=$STATE_DIR/apt-updated
# Wait for a dpkg lock held by e.g. unattended-upgrades on a freshly booted VM
# instead of failing at once.
readonly APT_OPTS=(-o DPkg::Lock::Timeout=300)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly VENV=$REPO/.venv
readonly VENV_STAMP=$VENV/.rlguard-installed

WITH_TEST=0
APT_UPDATED=0

log() { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[setup] ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<EOF
usage: $0 [--test]

Installs what rlguard needs on Debian 12 / Ubuntu 22.04 or newer (run as root).
  --test    also install the tools the test suite uses
EOF
}

parse_args() {
    while (($#)); do
        case $1 in
            --test) WITH_TEST=1 ;;
            -h | --help)
                usage
                exit 0
                ;;
            *)
                usage >&2
                die "unknown option: $1"
                ;;
        esac
        shift
    done
}

require_root() {
    if ((EUID != 0)); then
        die "must run as root (it installs packages, mounts tracefs and links kernel headers): run 'sudo make setup' or 'sudo $0'"
    fi
}

# Prints "debian" or "ubuntu"; dies with the package list on anything else.
detect_distro() {
    local id="" id_like=""
    if [[ -r /etc/os-release ]]; then
        # shellcheck disable=SC1091
        id=$(. /etc/os-release && echo "${ID:-}")
        # shellcheck disable=SC1091
        id_like=$(. /etc/os-release && echo "${ID_LIKE:-}")
    fi
    if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
        die "only Debian/Ubuntu (apt) hosts are set up automatically (found: ${id:-unknown}).
  Install by hand: python3 (>= 3.10) with venv and pip, the bcc Python binding
  (python3-bcc / python3-bpfcc), kernel headers for $(uname -r) at
  /lib/modules/$(uname -r)/build, iproute2, ca-certificates, make, gcc, libc headers;
  for tests also: openssh server and client, liburing headers, tmux, bpftrace,
  procps, util-linux, file, shellcheck, postgresql. Then create the venv:
  /usr/bin/python3 -m venv --system-site-packages .venv && .venv/bin/pip install -e '.[dev]'"
    fi
    case " $id $id_like " in
        *" ubuntu "*) echo ubuntu ;;
        *" debian "*) echo debian ;;
        *) die "apt found but the distribution '${id:-unknown}' is neither Debian nor Ubuntu; not guessing its package names" ;;
    esac
}

# --- apt ---------------------------------------------------------------------

apt_lists_fresh() {
    # Lists are usable when some Packages index exists and an update happened
    # within the last day. apt keeps the server's timestamp on files that did
    # not change, so our own stamp and the Release files are the evidence.
    compgen -G "$APT_LISTS/*_Packages*" >/dev/null || return 1
    [[ -n $(find "$APT_STAMP" "$APT_LISTS" -maxdepth 1 \
        \( -name "$(basename "$APT_STAMP")" -o -name '*Release' \) \
        -mmin -1440 -print -quit 2>/dev/null) ]]
}

apt_update() {
    log "apt-get update"
    apt-get "${APT_OPTS[@]}" update -q
    mkdir -p "$STATE_DIR"
    touch "$APT_STAMP"
    APT_UPDATED=1
}

apt_update_if_stale() {
    if ((APT_UPDATED == 0)) && ! apt_lists_fresh; then
        apt_update
    fi
}

# Prints the packages among "$@" that dpkg does not list as installed.
missing_packages() {
    local installed
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null |
        awk '$2 == "installed" { print $1 }' || true)
    local p
    for p in "$@"; do
        grep -qxF "$p" <<<"$installed" || echo "$p"
    done
}

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y -q \
        --no-install-recommends "$@"
}

# Installs the packages among "$@" that are missing; no apt call if none is.
ensure_packages() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    if ((${#missing[@]} == 0)); then
        if (($# == 1)); then log "package present: $1"; else log "packages: all $# present"; fi
        return 0
    fi
    log "installing: ${missing[*]}"
    apt_update_if_stale
    if ! apt_install "${missing[@]}"; then
        # Old lists name versions the mirror no longer has, or lack a package.
        ((APT_UPDATED == 0)) || die "apt-get install ${missing[*]} failed"
        warn "install failed; refreshing package lists and retrying once"
        apt_update
        apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
    fi
}

# True when apt knows an installable candidate for package $1 (offline).
apt_has_candidate() {
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
    [[ -n $cand && $cand != "(none)" ]]
}

# --- kernel headers ------------------------------------------------------------

# A directory bcc can build against: generated headers or a kbuild Makefile.
is_header_tree() {
    [[ -d $1 && (-d $1/include/generated || -f $1/Makefile) ]]
}

# Kernel release a header tree was generated for, or nothing if not recorded.
tree_release() {
    local f=$1/include/generated/utsrelease.h
    [[ -r $f ]] || return 0
    sed -n 's/^#define UTS_RELEASE "\(.*\)"$/\1/p' "$f" | head -n1
}

marker_value() {
    [[ -r $HEADERS_MARKER ]] || return 0
    sed -n "s/^$1=//p" "$HEADERS_MARKER" | head -n1
}

# Debian splits headers in an arch tree and a -common tree; Ubuntu's flavour
# tree stands alone.
common_tree_for() {
    local tree=$1 distro=$2 flavour=$3
    if [[ $distro == debian ]]; then
        echo "${tree%-"$flavour"}-common"
    else
        echo "$tree"
    fi
}

# Sets FLAVOUR and META_PKG for the distro's generic headers.
generic_headers_for() {
    local distro=$1
    if [[ $distro == ubuntu ]]; then
        FLAVOUR=generic
        META_PKG=linux-headers-generic
        return
    fi
    local arch
    arch=$(dpkg --print-architecture)
    case $arch in
        amd64 | arm64) ;;
        *) die "no generic Debian headers known for architecture $arch; install headers for $(uname -r) by hand" ;;
    esac
    FLAVOUR=$arch
    META_PKG=linux-headers-$arch
}

write_marker() {
    local kr=$1 build=$2 source=$3
    local content
    content=$(printf 'kernel=%s\nbuild=%s\nsource=%s\nheaders_release=%s\n' \
        "$kr" "$build" "$source" "$(tree_release "$build")")
    if [[ ! -r $HEADERS_MARKER || $(<"$HEADERS_MARKER") != "$content" ]]; then
        mkdir -p "$STATE_DIR"
        printf '%s\n' "$content" >"$HEADERS_MARKER"
    fi
}

warn_fallback() {
    local kr=$1 build=$2 source=$3
    local rel
    rel=$(tree_release "$build")
    {
        echo '[setup] !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
        echo "[setup] !! WARNING: kernel $kr has no matching headers."
        echo "[setup] !! Using the headers of ${rel:-another kernel} instead:"
        echo "[setup] !!   /lib/modules/$kr/build  -> $build"
        echo "[setup] !!   /lib/modules/$kr/source -> $source"
        echo '[setup] !! rlguard probes only read tracepoint fields, BPF helpers and user memory,'
        echo '[setup] !! so they stay correct. Other bcc tools that read kernel structs'
        echo '[setup] !! (tcplife, biotop, ...) WILL READ GARBAGE on this host.'
        echo "[setup] !! Recorded in $HEADERS_MARKER."
        echo '[setup] !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
    } >&2
}

# Replace a link (never a real directory) at $1 with a link to $2.
set_link() {
    local link=$1 target=$2
    if [[ -e $link && ! -L $link ]]; then
        if [[ -d $link ]] && rmdir "$link" 2>/dev/null; then
            : # an empty directory is safe to replace
        else
            die "$link exists and is not a symlink; move it away and rerun"
        fi
    fi
    ln -sfn "$target" "$link"
}

setup_headers() {
    local distro=$1
    local kr moddir build_dir source_dir rel
    kr=$(uname -r)
    moddir=/lib/modules/$kr
    build_dir=$moddir/build
    source_dir=$moddir/source

    if is_header_tree "$build_dir"; then
        rel=$(tree_release "$build_dir")
        if [[ $rel == "$kr" ]] ||
            [[ -z $rel && $(marker_value kernel) != "$kr" ]]; then
            log "matching kernel headers: $build_dir -> $(readlink -f "$build_dir")"
            [[ ! -e $HEADERS_MARKER ]] || rm -f "$HEADERS_MARKER"
            return 0
        fi
    fi

    # No matching tree. Real headers win when the distro has them; the check
    # is offline when a fallback is already in place so reruns stay quiet.
    local have_fallback=0
    if is_header_tree "$build_dir" && [[ -d $source_dir ]]; then
        have_fallback=1
    else
        apt_update_if_stale
    fi
    if apt_has_candidate "linux-headers-$kr"; then
        log "installing matching kernel headers: linux-headers-$kr"
        # The package ships its own build/source links; ours must not be in the way.
        [[ ! -L $build_dir ]] || rm -f "$build_dir"
        [[ ! -L $source_dir ]] || rm -f "$source_dir"
        ensure_packages "linux-headers-$kr"
        is_header_tree "$build_dir" ||
            die "linux-headers-$kr is installed but $build_dir is not a header tree"
        rm -f "$HEADERS_MARKER"
        log "matching kernel headers: $build_dir -> $(readlink -f "$build_dir")"
        return 0
    fi

    local build_tree source_tree
    if ((have_fallback)); then
        build_tree=$(readlink -f "$build_dir")
        source_tree=$(readlink -f "$source_dir")
        log "kernel headers: keeping fallback links to $build_tree"
    else
        local FLAVOUR META_PKG
        generic_headers_for "$distro"
        log "no linux-headers-$kr package; falling back to $META_PKG"
        ensure_packages "$META_PKG"
        build_tree=""
        local t
        while read -r t; do
            is_header_tree "$t" || continue
            if [[ -d $(common_tree_for "$t" "$distro" "$FLAVOUR") ]]; then
                build_tree=$t
            fi
        done < <(compgen -G "/usr/src/linux-headers-*-$FLAVOUR" | sort -V)
        [[ -n $build_tree ]] ||
            die "$META_PKG is installed but no /usr/src/linux-headers-*-$FLAVOUR tree was found"
        source_tree=$(common_tree_for "$build_tree" "$distro" "$FLAVOUR")
        mkdir -p "$moddir"
        set_link "$build_dir" "$build_tree"
        set_link "$source_dir" "$source_tree"
        log "linked $build_dir -> $build_tree"
        log "linked $source_dir -> $source_tree"
    fi
    write_marker "$kr" "$build_tree" "$source_tree"
    warn_fallback "$kr" "$build_tree" "$source_tree"
}

# --- kernel filesystems --------------------------------------------------------

# Prints the first mount point of filesystem type $1 (or only at $2 if given).
mount_of() {
    awk -v t="$1" -v at="${2:-}" \
        '$3 == t && (at == "" || $2 == at) { print $2; exit }' /proc/mounts
}

setup_tracefs() {
    # bcc reads tracepoint formats from /sys/kernel/debug/tracing when that
    # exists, else /sys/kernel/tracing; the latter is enough, debugfs is not needed.
    local mp=/sys/kernel/tracing
    if [[ -n $(mount_of tracefs "$mp") ]]; then
        log "tracefs mounted at $mp"
        return 0
    fi
    log "mounting tracefs at $mp"
    mount -t tracefs tracefs "$mp" || die "cannot mount tracefs at $mp; bcc needs it for tracepoints"
}

setup_cgroup2() {
    local mp
    for mp in /sys/fs/cgroup /sys/fs/cgroup/unified; do
        if [[ -n $(mount_of cgroup2 "$mp") ]]; then
            log "cgroup v2 mounted at $mp"
            return 0
        fi
    done
    mp=$(mount_of cgroup2)
    if [[ -n $mp ]]; then
        log "cgroup v2 mounted at $mp"
        return 0
    fi
    mp=/sys/fs/cgroup/unified
    if mkdir -p "$mp" 2>/dev/null && mount -t cgroup2 cgroup2 "$mp" 2>/dev/null; then
        log "mounted cgroup v2 at $mp"
    else
        warn "no cgroup v2 mount and none could be made at $mp; cgroup-attached probes will not load"
    fi
}

# --- Python environment -------------------------------------------------------

venv_ok() {
    [[ -x $VENV/bin/python && -r $VENV/pyvenv.cfg ]] || return 1
    # Made by the system interpreter (the one that sees python3-bpfcc) ...
    [[ $(readlink -f "$VENV/bin/python") == "$(readlink -f "$SYS_PYTHON")" ]] || return 1
    # ... with the system site-packages visible, and able to run pip.
    grep -qE '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" || return 1
    "$VENV/bin/python" -c 'import pip' 2>/dev/null
}

setup_venv() {
    if [[ -e $VENV ]] && ! venv_ok; then
        log "recreating $VENV (broken, or not made by $SYS_PYTHON with system site-packages)"
        rm -rf "$VENV"
    fi
    if [[ ! -e $VENV ]]; then
        log "creating $VENV with $SYS_PYTHON --system-site-packages"
        "$SYS_PYTHON" -m venv --system-site-packages "$VENV"
    fi
    if [[ -f $VENV_STAMP && ! $REPO/pyproject.toml -nt $VENV_STAMP && -x $VENV/bin/rlguard ]]; then
        log "venv up to date: $VENV"
    else
        log "pip install -e '.[dev]' into $VENV"
        "$VENV/bin/python" -m pip install -q -e "${REPO}[dev]"
        touch "$VENV_STAMP"
    fi
    local ver err
    if ver=$("$VENV/bin/python" -c 'import bcc; print(getattr(bcc, "__version__", "?"))' 2>/dev/null); then
        log "bcc $ver importable from $VENV/bin/python"
        return 0
    fi
    err=$("$VENV/bin/python" -c 'import bcc' 2>&1 | tail -n1 || true)
    if "$SYS_PYTHON" -c 'import bcc' 2>/dev/null; then
        die "$SYS_PYTHON imports bcc but $VENV/bin/python does not ($err): remove $VENV and rerun"
    fi
    die "bcc is not importable ($err): python3-bpfcc must be installed for $SYS_PYTHON"
}

main() {
    parse_args "$@"
    require_root
    local distro
    distro=$(detect_distro)
    local packages=("${BASE_PACKAGES[@]}") what="base"
    if ((WITH_TEST)); then
        packages+=("${TEST_PACKAGES[@]}")
        what="base + test"
    fi
    log "$distro host, kernel $(uname -r), $what setup"
    ensure_packages "${packages[@]}"
    setup_headers "$distro"
    setup_tracefs
    setup_cgroup2
    setup_venv
    log "done"
}

main "$@"
