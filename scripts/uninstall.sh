#!/bin/sh
# Removes Kav's program files and systemd unit. Keeps the data: the configuration (/etc/kav),
# the secrets (/etc/credstore/kav.*), the call records (/var/lib/kav) and any unit drop-ins.
#
#   scripts/uninstall.sh [--prefix DIR]
#
#   --prefix DIR   uninstall from a tree made by install.sh --prefix DIR; systemctl is not run
set -eu

die() {
  echo "uninstall.sh: $*" >&2
  exit 1
}

PREFIX=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "missing a directory after --prefix"; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
    -h|--help) sed -n '2,7s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) die "unknown option \"$1\" (see --help)" ;;
  esac
done

if [ -n "$PREFIX" ]; then
  [ -d "$PREFIX" ] || die "no such directory \"$PREFIX\""
  PREFIX=$(cd "$PREFIX" && pwd)
elif [ "$(id -u)" -ne 0 ]; then
  die "run as root (or pass --prefix DIR)"
fi

if [ -z "$PREFIX" ] && [ -d /run/systemd/system ]; then
  # Stopping drains active calls first (SIGTERM, up to server.drain_timeout_s).
  systemctl disable --now kav.service 2>/dev/null || true
fi

removed=0
for path in \
  "$PREFIX/etc/systemd/system/kav.service" \
  "$PREFIX/usr/local/bin/kav" \
  "$PREFIX/usr/local/lib/kav" \
  "$PREFIX/usr/local/share/doc/kav"; do
  if [ -e "$path" ] || [ -L "$path" ]; then
    rm -rf "$path"
    echo "  removed $path"
    removed=1
  fi
done
[ "$removed" -eq 1 ] || echo "  Kav is not installed in ${PREFIX:-/}"

if [ -z "$PREFIX" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl reset-failed kav.service 2>/dev/null || true
fi

cat <<EOF

Kept (remove by hand to erase everything):
  $PREFIX/etc/kav                   configuration
  $PREFIX/etc/credstore/kav.*       secrets
  $PREFIX/var/lib/private/kav       call records (SQLite), shown as /var/lib/kav while running
  $PREFIX/var/cache/private/kav     cache
  $PREFIX/etc/systemd/system/kav.service.d   drop-ins, if any
EOF
