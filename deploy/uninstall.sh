#!/usr/bin/env bash
# Remove the service installed by deploy/install.sh: stop and disable it, remove the unit and the venv.
# Idempotent. Keeps the env file, the desired-state folder and the state directory unless --purge.
# Stopping the service leaves its workloads running (KillMode=process); --down stops them first.
#
# usage: deploy/uninstall.sh [--root DIR] [--prefix DIR] [--no-systemctl] [--down] [--purge]
#   --root DIR       remove what `install.sh --root DIR` installed (DESTDIR=DIR does the same);
#                    implies --no-systemctl
#   --prefix DIR     where the venv is [/opt/localaistack-reconciler]
#   --no-systemctl   only remove files: no stop, disable or daemon-reload
#   --down           stop every workload first (`reconciler down` on the configured folders)
#   --purge          also remove the env file, drop-ins, the state and cache directories. The specs in
#                    the desired-state folder are never removed (an empty folder is).
set -euo pipefail

UNIT=localaistack-reconciler.service
root=${DESTDIR:-} prefix=/opt/localaistack-reconciler use_systemctl=yes down=no purge=no

die() { echo "uninstall.sh: $*" >&2; exit 1; }
value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; printf '%s' "$2"; }
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=$(value "$@"); shift 2 ;;
        --root=*) root=${1#*=}; shift ;;
        --prefix) prefix=$(value "$@"); shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --no-systemctl) use_systemctl=no; shift ;;
        --down) down=yes; shift ;;
        --purge) purge=yes; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case $prefix in /*) ;; *) die "--prefix must be an absolute path: $prefix" ;; esac
prefix=${prefix%/}
if [ -n "$root" ]; then
    root=$(realpath -m -- "$root")
    use_systemctl=no
    [ "$down" = no ] || die "--down stops this machine's workloads: not with --root"
elif [ "$(id -u)" -ne 0 ]; then
    die "run it as root (or with --root DIR)"
fi

venv=$root$prefix/venv
etc=$root/etc/localaistack-reconciler
unit_file=$root/etc/systemd/system/$UNIT
systemd_runs=no
if [ "$use_systemctl" = yes ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemd_runs=yes
fi

# 1. Stop the daemon first, so that it does not restart what --down stops.
if [ "$systemd_runs" = yes ] && [ -e "$unit_file" ]; then
    systemctl disable --now "$UNIT"
fi
if [ "$down" = yes ] && [ -x "$venv/bin/reconciler" ]; then
    # The folders the service used: the unit's defaults, then the env file's values.
    (
        RECONCILER_PATH=/etc/localaistack-reconciler/desired-state
        RECONCILER_STATE_DIR=/var/lib/localaistack-reconciler
        # shellcheck disable=SC1091
        if [ -r "$etc/env" ]; then set -a; . "$etc/env"; set +a; fi
        "$venv/bin/reconciler" down "$RECONCILER_PATH" --state-dir "$RECONCILER_STATE_DIR"
    ) || die "reconciler down failed: nothing was removed; see its message above"
fi

# 2. The unit, the venv and what install.sh put beside it.
rm -f -- "$unit_file"
if [ "$systemd_runs" = yes ]; then
    systemctl daemon-reload
    systemctl reset-failed "$UNIT" 2>/dev/null || true  # only fails when it was not failed
fi
rm -rf -- "$venv"
rm -f -- "$root$prefix/README.md" "$root$prefix/reconciler.env"
rm -rf -- "$root$prefix/docs"
rmdir -- "$root$prefix" 2>/dev/null || true  # only when nothing else was put there

# 3. --purge: the configuration and the reconciler's memory, never the user's specs.
if [ "$purge" = yes ]; then
    [ "$down" = yes ] || echo "note: workloads the reconciler started keep running, and are no longer tracked once its state is gone (--down stops them first)"
    rm -rf -- "$root/var/lib/localaistack-reconciler" "$root/var/cache/localaistack-reconciler" \
        "$root/etc/systemd/system/$UNIT.d"
    rm -f -- "$etc/env"
    rmdir -- "$etc/desired-state" "$etc" 2>/dev/null || true
    [ ! -d "$etc/desired-state" ] || echo "kept $etc/desired-state: it holds specs"
else
    echo "kept ${etc#"$root"}/env, the desired-state folder and /var/lib/localaistack-reconciler (--purge removes them)"
fi
echo "removed $UNIT and ${prefix}/venv${root:+ under $root}"
