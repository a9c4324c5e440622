#!/bin/sh
# Installs Iotistic Agent on a Debian device as a systemd service (docs/operations.md).
#
#   sudo deploy/install.sh [--source DIR] [--config EXAMPLE] [--no-start] [--dry-run] [--root DIR]
#   sudo deploy/install.sh --uninstall [--purge] [--dry-run] [--root DIR]
#
# From a built source tree (npm ci && npm run build), by default the one this script is in:
#   /opt/iotistic-agent/           the bundle (dist/bundle), package.json, schema/, examples/, the
#                                  node_modules the bundle loads at run time (better-sqlite3, ...)
#   /usr/local/bin/iotistic-agent  a link to the bundle's CLI
#   /etc/iotistic-agent/config.json  from examples/EXAMPLE.json (default local.json) when absent, 0600
#   /etc/systemd/system/iotistic-agent.service
# then systemctl daemon-reload, enable and (re)start, unless --no-start. Run again to upgrade: the
# program is replaced, config.json and the data in /var/lib/iotistic-agent are kept.
#
# --uninstall stops and removes the service, the program and the link; the config and
# /var/lib/iotistic-agent (queue, identity, keys) are kept unless --purge.
# --root DIR installs everything under DIR and runs no systemctl (for images and tests).
# --dry-run prints what would be done and does nothing.
set -eu

PREFIX=/opt/iotistic-agent
BIN=/usr/local/bin/iotistic-agent
ETC=/etc/iotistic-agent
STATE=/var/lib/iotistic-agent
UNIT=/etc/systemd/system/iotistic-agent.service
SERVICE=iotistic-agent.service

SOURCE=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
ROOT=
EXAMPLE=local
DRY=0
START=1
UNINSTALL=0
PURGE=0

say() { printf 'iotistic-agent install: %s\n' "$*"; }
die() { printf 'iotistic-agent install: error: %s\n' "$*" >&2; exit 1; }
# Every change goes through run: printed and skipped with --dry-run.
run() {
  if [ "$DRY" = 1 ]; then printf '+ %s\n' "$*"; else "$@"; fi
}

while [ $# -gt 0 ]; do
  case $1 in
    --source) [ $# -ge 2 ] || die "--source needs a directory"; SOURCE=$2; shift ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift ;;
    --config) [ $# -ge 2 ] || die "--config needs an example name"; EXAMPLE=$2; shift ;;
    --no-start) START=0 ;;
    --dry-run) DRY=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge goes with --uninstall"
if [ -n "$ROOT" ]; then
  [ "$DRY" = 1 ] || mkdir -p "$ROOT"
  if absolute=$(CDPATH='' cd -- "$ROOT" 2>/dev/null && pwd); then ROOT=$absolute; fi
  case $ROOT in /*) ;; *) die "--root needs an absolute path or an existing directory: $ROOT" ;; esac
  [ "$ROOT" != / ] || ROOT=
fi

# Files are the system's (0644/0755); what holds secrets is set 0600/0700 below.
umask 022

check_root() {
  [ -n "$ROOT" ] && return 0
  [ "$(id -u)" = 0 ] && return 0
  if [ "$DRY" = 1 ]; then say "not root: a real run needs root (or --root DIR)"; else die "run as root (or with --root DIR)"; fi
}

check_node() {
  command -v node >/dev/null 2>&1 || die "node is not installed (Node.js 20.18 or later is needed)"
  version=$(node -p 'process.versions.node')
  major=${version%%.*}
  rest=${version#*.}
  minor=${rest%%.*}
  if [ "$major" -lt 20 ] || { [ "$major" = 20 ] && [ "$minor" -lt 18 ]; }; then
    die "node $version is too old: Node.js 20.18 or later is needed"
  fi
}

systemctl_() {
  if [ -n "$ROOT" ]; then say "skipping systemctl $* (--root)"; else run systemctl "$@"; fi
}

install_program() {
  [ -f "$SOURCE/dist/bundle/cli.js" ] || die "$SOURCE/dist/bundle/cli.js is missing: run npm ci && npm run build in $SOURCE first"
  [ -f "$SOURCE/examples/$EXAMPLE.json" ] || die "no example $SOURCE/examples/$EXAMPLE.json"
  modules=$(node "$SOURCE/deploy/runtime-modules.mjs" "$SOURCE") || die "cannot list the modules the bundle needs"
  stage="$ROOT$PREFIX.new"
  say "installing $SOURCE into $ROOT$PREFIX"
  run rm -rf "$stage"
  run mkdir -p "$stage/dist" "$stage/docs" "$stage/deploy/systemd" "$stage/node_modules"
  run cp -R "$SOURCE/dist/bundle" "$stage/dist/bundle"
  run cp -R "$SOURCE/schema" "$SOURCE/examples" "$SOURCE/package.json" "$stage/"
  run cp "$SOURCE/docs/operations.md" "$stage/docs/"
  run cp "$SOURCE/deploy/systemd/iotistic-agent.service" "$stage/deploy/systemd/"
  for m in $modules; do
    run mkdir -p "$stage/$(dirname "$m")"
    run cp -R "$SOURCE/$m" "$stage/$m"
  done
  run chmod 0755 "$stage/dist/bundle/cli.js"
  # Replaced whole, the old copy removed only once the new one is complete.
  run rm -rf "$ROOT$PREFIX.old"
  if [ -e "$ROOT$PREFIX" ]; then run mv "$ROOT$PREFIX" "$ROOT$PREFIX.old"; fi
  run mv "$stage" "$ROOT$PREFIX"
  run rm -rf "$ROOT$PREFIX.old"
  run mkdir -p "$ROOT$(dirname "$BIN")"
  run ln -sfn "$PREFIX/dist/bundle/cli.js" "$ROOT$BIN"
}

install_config() {
  run mkdir -p "$ROOT$ETC"
  run chmod 0700 "$ROOT$ETC"
  if [ -e "$ROOT$ETC/config.json" ]; then
    say "keeping $ROOT$ETC/config.json"
  else
    say "writing $ROOT$ETC/config.json from examples/$EXAMPLE.json: edit it (placeholders REPLACE-WITH-...)"
    # Written 0600 from the start: the file will hold the device's key.
    if [ "$DRY" = 1 ]; then
      printf '+ %s\n' "sed (\$schema -> $PREFIX/schema/agent-config.schema.json) $SOURCE/examples/$EXAMPLE.json > $ROOT$ETC/config.json (0600)"
    else
      (umask 077 && sed "s#\"\\.\\./schema/agent-config\\.schema\\.json\"#\"$PREFIX/schema/agent-config.schema.json\"#" \
        "$SOURCE/examples/$EXAMPLE.json" >"$ROOT$ETC/config.json")
    fi
  fi
  run chmod 0600 "$ROOT$ETC/config.json"
  if [ "$DRY" = 0 ]; then
    node "$ROOT$PREFIX/dist/bundle/cli.js" config check --config "$ROOT$ETC/config.json" ||
      say "$ROOT$ETC/config.json does not pass config check yet: fix it (iotistic-agent config check --config $ETC/config.json)"
  fi
}

install_unit() {
  run mkdir -p "$ROOT$(dirname "$UNIT")"
  run cp "$SOURCE/deploy/systemd/iotistic-agent.service" "$ROOT$UNIT"
  run chmod 0644 "$ROOT$UNIT"
  systemctl_ daemon-reload
  if [ "$START" = 1 ]; then
    systemctl_ enable "$SERVICE"
    # restart, not start: an upgrade runs the new program.
    systemctl_ restart "$SERVICE"
  else
    say "not starting (--no-start): systemctl enable --now $SERVICE"
  fi
}

uninstall() {
  if [ -n "$ROOT" ] || [ -e "$UNIT" ]; then systemctl_ disable --now "$SERVICE"; fi
  run rm -f "$ROOT$UNIT"
  systemctl_ daemon-reload
  run rm -f "$ROOT$BIN"
  run rm -rf "$ROOT$PREFIX" "$ROOT$PREFIX.new" "$ROOT$PREFIX.old"
  if [ "$PURGE" = 1 ]; then
    say "purging $ROOT$ETC and $ROOT$STATE (config, queue, identity, keys)"
    run rm -rf "$ROOT$ETC" "$ROOT$STATE"
  else
    say "kept $ROOT$ETC and $ROOT$STATE (--purge removes them)"
  fi
}

check_root
if [ "$UNINSTALL" = 1 ]; then
  uninstall
else
  check_node
  install_program
  install_config
  install_unit
fi
say "done"
