#!/bin/sh
# Installs Kav from a build in dist/ (deno task compile, or deno task bundle where no executable
# could be built) as a systemd service. Safe to run again: unchanged files are left untouched and
# an edited /etc/kav/kav.toml is never overwritten.
#
#   scripts/install.sh [--prefix DIR] [--bundle] [--deno PATH]
#
#   --prefix DIR   install under DIR as if it were / (packaging, tests); systemctl is not run
#   --bundle       install deno + kav.js even when dist/kav exists
#   --deno PATH    the deno to ship with kav.js (default: the deno on PATH)
set -eu

usage() {
  sed -n '2,10s/^# \{0,1\}//p' "$0"
}

die() {
  echo "install.sh: $*" >&2
  exit 1
}

PREFIX=""
MODE=""
DENO="${DENO:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "missing a directory after --prefix"; PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
    --bundle) MODE="bundle"; shift ;;
    --deno) [ $# -ge 2 ] || die "missing a path after --deno"; DENO="$2"; shift 2 ;;
    --deno=*) DENO="${1#--deno=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option \"$1\" (see --help)" ;;
  esac
done

SRC=$(cd "$(dirname "$0")/.." && pwd)
DIST="$SRC/dist"
if [ -n "$PREFIX" ]; then
  mkdir -p "$PREFIX"
  PREFIX=$(cd "$PREFIX" && pwd)
elif [ "$(id -u)" -ne 0 ]; then
  die "run as root (or pass --prefix DIR to install into a directory)"
fi

BIN="$PREFIX/usr/local/bin"
LIB="$PREFIX/usr/local/lib/kav"
DOC="$PREFIX/usr/local/share/doc/kav"
UNIT_DIR="$PREFIX/etc/systemd/system"
ETC="$PREFIX/etc/kav"
CREDSTORE="$PREFIX/etc/credstore"
CHANGED=0

# install_file SOURCE DEST MODE: copies only when content or mode differ, atomically.
install_file() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then
    if [ "$(stat -c %a "$2")" != "$3" ]; then chmod "$3" "$2"; CHANGED=1; fi
    return 0
  fi
  mkdir -p "$(dirname "$2")"
  cp "$1" "$2.kav-new"
  chmod "$3" "$2.kav-new"
  mv -f "$2.kav-new" "$2"
  echo "  installed $2"
  CHANGED=1
}

# make_dir DIR MODE [own]: creates DIR with MODE; "own" also corrects the mode of an existing
# DIR (Kav's own directories, not shared ones such as /usr/local/bin).
make_dir() {
  if [ ! -d "$1" ]; then
    mkdir -p "$1"
    chmod "$2" "$1"
    echo "  created $1"
    CHANGED=1
  elif [ "${3:-}" = own ] && [ "$(stat -c %a "$1")" != "$2" ]; then
    chmod "$2" "$1"
    CHANGED=1
  fi
}

remove_path() {
  if [ -e "$1" ]; then rm -rf "$1"; echo "  removed $1"; CHANGED=1; fi
}

if [ -z "$MODE" ]; then
  if [ -x "$DIST/kav" ] && [ -f "$DIST/kav" ]; then MODE="executable"; else MODE="bundle"; fi
fi
if [ "$MODE" = "bundle" ]; then
  if [ ! -f "$DIST/kav.js" ] || [ ! -f "$DIST/kav-launcher.sh" ]; then
    die "no build in $DIST: run 'deno task compile' (or 'deno task bundle' where no denort is available) first"
  fi
  [ -n "$DENO" ] || DENO=$(command -v deno || true)
  [ -n "$DENO" ] || die "deno not found: pass --deno PATH to ship with kav.js"
  # Resolve wrappers and symlinks to the real binary.
  DENO_EXE=$("$DENO" eval --no-config 'console.log(Deno.execPath())' 2>/dev/null) ||
    die "cannot run \"$DENO\" to find the deno binary"
  [ -x "$DENO_EXE" ] || die "\"$DENO_EXE\" is not an executable deno"
fi

echo "Installing Kav ($MODE) into ${PREFIX:-/}"
make_dir "$BIN" 755
if [ "$MODE" = "executable" ]; then
  install_file "$DIST/kav" "$BIN/kav" 755
  # A bundle install left behind by an earlier run.
  remove_path "$LIB"
else
  make_dir "$LIB" 755 own
  install_file "$DENO_EXE" "$LIB/deno" 755
  install_file "$DIST/kav.js" "$LIB/kav.js" 644
  install_file "$DIST/kav-launcher.sh" "$BIN/kav" 755
fi

make_dir "$UNIT_DIR" 755
install_file "$SRC/systemd/kav.service" "$UNIT_DIR/kav.service" 644

# Config: a new install gets the example; an unedited copy of the previous example follows the
# new one; an edited file is left alone.
EXAMPLE="$SRC/kav.example.toml"
[ -f "$EXAMPLE" ] || die "missing $EXAMPLE"
make_dir "$ETC" 755 own
make_dir "$DOC" 755 own
CONFIG_NOTE=""
if [ ! -e "$ETC/kav.toml" ]; then
  install_file "$EXAMPLE" "$ETC/kav.toml" 644
  CONFIG_NOTE="edit $ETC/kav.toml: set server.public_url at least"
elif [ -f "$DOC/kav.example.toml" ] && cmp -s "$ETC/kav.toml" "$DOC/kav.example.toml"; then
  install_file "$EXAMPLE" "$ETC/kav.toml" 644
  CONFIG_NOTE="edit $ETC/kav.toml: it is still the unedited example"
elif ! cmp -s "$ETC/kav.toml" "$EXAMPLE"; then
  if [ -f "$DOC/kav.example.toml" ] && ! cmp -s "$DOC/kav.example.toml" "$EXAMPLE"; then
    CONFIG_NOTE="kept your $ETC/kav.toml; the example changed: compare with $DOC/kav.example.toml"
  fi
fi
install_file "$EXAMPLE" "$DOC/kav.example.toml" 644
[ ! -f "$SRC/README.md" ] || install_file "$SRC/README.md" "$DOC/README.md" 644
# The README links these by relative path, so they keep it.
for doc in "$SRC"/docs/*.md; do
  [ ! -f "$doc" ] || install_file "$doc" "$DOC/docs/$(basename "$doc")" 644
done
# systemd's credential store; Kav's secrets go in as kav.<name> (see kav.service).
make_dir "$CREDSTORE" 700

if [ -z "$PREFIX" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if systemctl is-active --quiet kav.service && [ "$CHANGED" -eq 1 ]; then
    echo "Kav is running the previous version: 'systemctl restart kav' drains calls and restarts it."
  fi
fi

[ "$CHANGED" -eq 1 ] || echo "  nothing changed"

PUBLIC_URL=$(sed -n 's/^[[:space:]]*public_url[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$ETC/kav.toml" | head -n 1)
PUBLIC_URL="${PUBLIC_URL:-https://kav.example.com}"
cat <<EOF

Next steps:
  1. Configuration: ${CONFIG_NOTE:-$ETC/kav.toml is in place}
     Check it with: kav check-config /etc/kav/kav.toml
  2. Secrets, as root-only files in /etc/credstore/ (only the ones you use):
       systemd-ask-password -n "Twilio auth token:" > /etc/credstore/kav.twilio_auth_token
       systemd-ask-password -n "OpenAI API key:" > /etc/credstore/kav.openai_api_key
       install -m 600 service-account.json /etc/credstore/kav.google_credentials
       chmod 600 /etc/credstore/kav.*
  3. Start it: systemctl enable --now kav; follow it with: journalctl -u kav -f
  4. Twilio console > Phone Numbers > your number > Voice Configuration:
       A call comes in: Webhook, HTTP POST, $PUBLIC_URL/twiml
EOF
