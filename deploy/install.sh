#!/usr/bin/env bash
# Install (or upgrade) the reconciler as the systemd service localaistack-reconciler
# (docs/guides/service.md). Idempotent: run it again after `git pull` to upgrade; the env
# file and the desired-state folder are never overwritten, and a running service is restarted, which
# leaves its workloads running (KillMode=process).
#
# usage: deploy/install.sh [--root DIR] [--prefix DIR] [--no-systemctl] [--python PY] [--pip-args ARGS]
#   --root DIR       install under DIR as if it were / (tests, images; DESTDIR=DIR does the same);
#                    implies --no-systemctl. The venv's scripts name DIR in their paths.
#   --prefix DIR     where the venv goes [/opt/localaistack-reconciler]; the unit's paths follow it
#   --no-systemctl   only copy files: no daemon-reload, enable or start
#   --python PY      the interpreter the venv is made from [python3]; 3.11 or newer
#   --pip-args ARGS  more words for `pip install`, split on spaces (e.g. "--no-index --find-links DIR")
set -euo pipefail

UNIT=localaistack-reconciler.service
DEFAULT_PREFIX=/opt/localaistack-reconciler
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=${DESTDIR:-} prefix=$DEFAULT_PREFIX use_systemctl=yes python=python3 pip_args=

die() { echo "install.sh: $*" >&2; exit 1; }
value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; printf '%s' "$2"; }
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=$(value "$@"); shift 2 ;;
        --root=*) root=${1#*=}; shift ;;
        --prefix) prefix=$(value "$@"); shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --python) python=$(value "$@"); shift 2 ;;
        --python=*) python=${1#*=}; shift ;;
        --pip-args) pip_args=$(value "$@"); shift 2 ;;
        --pip-args=*) pip_args=${1#*=}; shift ;;
        --no-systemctl) use_systemctl=no; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case $prefix in /*) ;; *) die "--prefix must be an absolute path: $prefix" ;; esac
prefix=${prefix%/}
if [ -n "$root" ]; then
    root=$(realpath -m -- "$root")
    use_systemctl=no
elif [ "$(id -u)" -ne 0 ]; then
    die "run it as root (or with --root DIR to install into a folder)"
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$python is missing or older than Python 3.11 (choose one with --python)"

venv=$root$prefix/venv
etc=$root/etc/localaistack-reconciler
unit_dir=$root/etc/systemd/system

# 1. The venv, remade when its interpreter no longer runs (e.g. the system Python was upgraded).
if ! "$venv/bin/python" -c '' 2>/dev/null; then
    rm -rf -- "$venv"
    "$python" -m venv -- "$venv" || die "cannot create a venv (Debian: apt-get install python3-venv)"
fi

# 2. The package, from a copy of the sources, so that the build leaves nothing in the checkout. Our own
#    package is reinstalled even at an unchanged version number (an upgrade from a newer checkout).
build=$(mktemp -d)
trap 'rm -rf -- "$build"' EXIT
cp -r -- "$repo/pyproject.toml" "$repo/README.md" "$repo/reconciler" "$build/"
# shellcheck disable=SC2086 # --pip-args is split on purpose
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pip_args "$build"
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall $pip_args "$build"
"$venv/bin/reconciler" --help >/dev/null || die "the installed reconciler does not run"

# 3. The unit (ours: replaced on every install; local changes belong in drop-ins), the README and docs it
#    points to, and the shipped env file beside the venv for comparison.
install -d -m 0755 -- "$unit_dir" "$root$prefix"
sed "s#$DEFAULT_PREFIX/#$prefix/#g" "$repo/deploy/reconciler.service" >"$unit_dir/$UNIT.tmp"
chmod 0644 -- "$unit_dir/$UNIT.tmp"
mv -f -- "$unit_dir/$UNIT.tmp" "$unit_dir/$UNIT"
install -m 0644 -- "$repo/README.md" "$root$prefix/README.md"
rm -rf -- "$root$prefix/docs" && cp -r -- "$repo/docs" "$root$prefix/docs" && chmod -R u=rwX,go=rX -- "$root$prefix/docs"
install -m 0644 -- "$repo/deploy/reconciler.env" "$root$prefix/reconciler.env"

# 4. The env file (the user's once installed) and the default desired-state folder.
install -d -m 0755 -- "$etc" "$etc/desired-state"
if [ -e "$etc/env" ]; then
    echo "kept $etc/env (the shipped one is $root$prefix/reconciler.env)"
else
    install -m 0644 -- "$repo/deploy/reconciler.env" "$etc/env"
fi

echo "installed $prefix/venv/bin/reconciler and $UNIT${root:+ under $root}"
# 5. Enable and start, where systemd runs this machine.
if [ "$use_systemctl" = yes ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    was_active=no
    systemctl --quiet is-active "$UNIT" && was_active=yes
    systemctl daemon-reload
    systemctl enable --now "$UNIT"
    if [ "$was_active" = yes ]; then
        systemctl restart "$UNIT"  # run the new code; workloads keep running and are re-adopted
    fi
    echo "started: systemctl status ${UNIT%.service}; journalctl -u ${UNIT%.service} -f"
elif [ "$use_systemctl" = yes ]; then
    echo "systemd is not running here: not enabled. Where it runs: systemctl daemon-reload && systemctl enable --now ${UNIT%.service}"
fi
