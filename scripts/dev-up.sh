#!/usr/bin/env bash
# Quick start, command 1: run the whole Parley platform locally.
#
#   scripts/dev-up.sh
#
# Installs/starts PostgreSQL and RabbitMQ when needed, creates the database
# roles (passwords generated once, kept in .parley/local.env, mode 600), builds
# the `parley` binary, generates JWT keys once, migrates, then runs
# `parley serve --target all` in the foreground. Safe to run again.
#
# Environment:
#   PARLEY_PORT=8080        port to listen on (127.0.0.1 only)
#   PARLEY_PROFILE=release  or "debug" to use the debug build
#   PARLEY_SETUP_ONLY=1     stop after PostgreSQL/RabbitMQ/role/database setup
#                           (no build, keys, migrations or server); handy to
#                           prepare a machine or to test this script
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PARLEY_ROOT"

# Services with their own schema and runtime role. Adding chat/notification is
# one line each: SERVICES=(user chat notification) gives roles
# parley_<svc>_svc, `migrate --target <svc>` and PARLEY_<SVC>_DATABASE_URL.
SERVICES=(user chat notification)

# The local broker (guest may connect from loopback only, which is all we use).
LOCAL_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'

DB_NAME=parley
OWNER_ROLE=parley_owner
STATE_DIR=.parley
ENV_FILE="$STATE_DIR/local.env"
KEYS_DIR="$PARLEY_ROOT/$STATE_DIR/keys"
PORT="${PARLEY_PORT:-8080}"
PROFILE="${PARLEY_PROFILE:-release}"

case "$PROFILE" in
  release | debug) ;;
  *) die "PARLEY_PROFILE must be 'release' or 'debug', not '$PROFILE'" ;;
esac
[[ "$PORT" =~ ^[0-9]+$ ]] || die "PARLEY_PORT must be a port number, not '$PORT'"

# --- local secrets file (.parley/local.env) ------------------------------

# Value of KEY in the env file, or empty.
env_get() {
  [ -f "$ENV_FILE" ] || return 0
  sed -n "s/^$1=//p" "$ENV_FILE" | tail -n1
}

# Password for ROLE: reuse the stored one, else generate and store it.
role_password() {
  local key pw
  key="$(printf '%s_PASSWORD' "$1" | tr '[:lower:]' '[:upper:]')"
  pw="$(env_get "$key")"
  if [ -z "$pw" ]; then
    # 24 random bytes as hex: URL-safe, no quoting issues.
    pw="$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
    printf '%s=%s\n' "$key" "$pw" >>"$ENV_FILE"
    log "generated a password for $1 (stored in $ENV_FILE)"
  fi
  printf '%s\n' "$pw"
}

db_url() { printf 'postgres://%s:%s@127.0.0.1:5432/%s\n' "$1" "$2" "$DB_NAME"; }

# --- 1. dependencies ------------------------------------------------------

ensure_rust
ensure_postgres
ensure_rabbitmq

# --- 2. roles, database, secrets -------------------------------------------

mkdir -p "$STATE_DIR"
chmod 700 "$STATE_DIR"
(umask 077 && touch "$ENV_FILE")
chmod 600 "$ENV_FILE"

owner_pw="$(role_password "$OWNER_ROLE")"
pg_ensure_role "$OWNER_ROLE" "$owner_pw"
pg_ensure_database "$DB_NAME" "$OWNER_ROLE"

declare -A svc_pw=()
for svc in "${SERVICES[@]}"; do
  role="$(svc_role "$svc")"
  svc_pw[$svc]="$(role_password "$role")"
  pg_ensure_role "$role" "${svc_pw[$svc]}"
  pg_grant_connect "$DB_NAME" "$role"
done

if [ "${PARLEY_SETUP_ONLY:-0}" = 1 ]; then
  log "PARLEY_SETUP_ONLY=1: PostgreSQL, RabbitMQ, roles and database are ready; stopping before the build"
  exit 0
fi

# --- 3. build ----------------------------------------------------------------

target_dir="${CARGO_TARGET_DIR:-target}"
if [ "$PROFILE" = debug ]; then
  log "building parley (debug; the first build takes several minutes)"
  cargo build --bin parley
else
  log "building parley (release; the first build takes several minutes)"
  cargo build --release --bin parley
fi
bin="$target_dir/$PROFILE/parley"
[ -x "$bin" ] || die "build finished but $bin is missing"

# --- 4. JWT keys (once) ------------------------------------------------------

if [ -f "$KEYS_DIR/jwt-signing.pem" ]; then
  log "JWT keys already in $KEYS_DIR"
else
  log "generating JWT keys in $KEYS_DIR"
  (umask 077 && "$bin" keys generate --out "$KEYS_DIR")
fi
for f in jwt-signing.pem jwks.json; do
  [ -f "$KEYS_DIR/$f" ] || die "$KEYS_DIR/$f missing after 'parley keys generate'"
done

# --- 5. migrations (as the owner) ------------------------------------------

parley_migrate "$bin" "$(db_url "$OWNER_ROLE" "$owner_pw")" "$LOCAL_AMQP_URL" "${SERVICES[@]}"

# --- 6. serve -----------------------------------------------------------------

for svc in "${SERVICES[@]}"; do
  var="$(service_url_var "$svc")"
  export "$var=$(db_url "$(svc_role "$svc")" "${svc_pw[$svc]}")"
done
# DATABASE_URL (the original's name) = the first service's runtime URL.
DATABASE_URL="$(db_url "$(svc_role "${SERVICES[0]}")" "${svc_pw[${SERVICES[0]}]}")"
export DATABASE_URL
export AMQP_URL="$LOCAL_AMQP_URL"
export PARLEY_JWT_SIGNING_KEY_FILE="$KEYS_DIR/jwt-signing.pem"
export PARLEY_JWT_JWKS_FILE="$KEYS_DIR/jwks.json"
export PUBLIC_URL="${PUBLIC_URL:-http://127.0.0.1:${PORT}}"

printf 'Parley is starting on http://127.0.0.1:%s (health: /health)\n' "$PORT"
exec "$bin" serve --target all --listen "127.0.0.1:${PORT}"
