# shellcheck shell=bash
# Shared helpers for Parley's scripts. Source it; don't run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Works on a fresh Debian 12 (installs PostgreSQL / RabbitMQ / Rust when missing)
# and on a machine where they already run. Talks to 127.0.0.1 only.
#
# Tunables (environment):
#   PARLEY_WAIT_SECS     bound for every wait (default 60)
#   PARLEY_PG_ADMIN_URL  superuser URL for psql_admin instead of the local
#                        socket as OS user postgres (e.g. a CI service container)

# Repository root (the parent of scripts/).
PARLEY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PARLEY_ROOT
PARLEY_WAIT_SECS="${PARLEY_WAIT_SECS:-60}"
PG_HOST=127.0.0.1
PG_PORT=5432
AMQP_HOST=127.0.0.1
AMQP_PORT=5672

# --- logging -------------------------------------------------------------

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# --- small utilities -----------------------------------------------------

have() { command -v "$1" >/dev/null 2>&1; }

# Run a command as root (directly, or through passwordless sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif have sudo; then
    sudo -n "$@"
  else
    die "need root to run: $*"
  fi
}

# apt-get install, with one 'apt-get update' per script run.
_PARLEY_APT_UPDATED=0
apt_install() {
  have apt-get || die "apt-get not found: install $* by hand (this script targets Debian)"
  if [ "$_PARLEY_APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _PARLEY_APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# True if something accepts TCP connections on host:port (2 s bound).
tcp_open() {
  # shellcheck disable=SC2016 # $1/$2 expand in the child bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# wait_for DESCRIPTION HINT CMD...: retry CMD every second for PARLEY_WAIT_SECS.
wait_for() {
  local what="$1" hint="$2"
  shift 2
  local deadline=$((SECONDS + PARLEY_WAIT_SECS))
  log "waiting for $what (up to ${PARLEY_WAIT_SECS}s)"
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "$what not ready after ${PARLEY_WAIT_SECS}s. $hint"
    fi
    sleep 1
  done
  log "$what is ready"
}

systemd_running() { [ -d /run/systemd/system ]; }

# --- Rust ------------------------------------------------------------------

# Required toolchain version, from the workspace's rust-version (fallback 1.85,
# the first with edition 2024).
_rust_min_version() {
  local v
  v="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$PARLEY_ROOT/Cargo.toml" 2>/dev/null | head -n1)"
  printf '%s\n' "${v:-1.85}"
}

_rust_install_hint() {
  cat >&2 <<'EOF'
Install Rust with rustup (Debian's own cargo package is too old for edition 2024):
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
  . "$HOME/.cargo/env"
then run this script again.
EOF
}

# _version_ge A B: true if version A >= B (suffixes like -nightly ignored).
_version_ge() {
  [ "$(printf '%s\n%s\n' "$2" "${1%%-*}" | sort -V | head -n1)" = "$2" ]
}

ensure_rust() {
  # rustup's default location may be missing from PATH (non-login shells, CI).
  if ! have cargo && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
    export PATH
  fi
  if ! have cargo; then
    log "cargo not found; trying Debian's rustup package"
    if ! have rustup && ! apt_install rustup; then
      warn "the rustup package is not available here (it is not in Debian 12)"
      _rust_install_hint
      exit 1
    fi
    rustup default stable || {
      _rust_install_hint
      exit 1
    }
    PATH="$HOME/.cargo/bin:$PATH"
    export PATH
    have cargo || {
      _rust_install_hint
      exit 1
    }
  fi
  local have_v min_v
  have_v="$(cargo --version | awk '{print $2}')"
  min_v="$(_rust_min_version)"
  # sort -V puts the smaller version first.
  if ! _version_ge "$have_v" "$min_v"; then
    warn "cargo $have_v is older than the required $min_v ($(command -v cargo))"
    if have rustup; then
      log "rustup update stable"
      rustup update stable || die "rustup update stable failed"
      rustup default stable || die "rustup default stable failed"
      have_v="$(cargo --version | awk '{print $2}')"
    fi
    if ! _version_ge "$have_v" "$min_v"; then
      warn "still cargo $have_v at $(command -v cargo); remove Debian's cargo/rustc packages if installed"
      _rust_install_hint
      exit 1
    fi
  fi
  log "Rust: $(cargo --version)"
}

# --- PostgreSQL ----------------------------------------------------------

pg_ready() {
  if have pg_isready; then
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
  else
    tcp_open "$PG_HOST" "$PG_PORT"
  fi
}

# Highest installed server major version (e.g. 15), or empty.
_pg_server_version() {
  local d v=""
  for d in /usr/lib/postgresql/*/bin/postgres; do
    [ -x "$d" ] || continue
    d="${d#/usr/lib/postgresql/}"
    v="$(printf '%s\n%s\n' "$v" "${d%%/*}" | sort -V | tail -n1)"
  done
  printf '%s\n' "$v"
}

# Highest version with a 'main' cluster under /etc/postgresql, or empty.
_pg_cluster_version() {
  local d v=""
  for d in /etc/postgresql/*/main; do
    [ -d "$d" ] || continue
    d="${d#/etc/postgresql/}"
    v="$(printf '%s\n%s\n' "$v" "${d%%/*}" | sort -V | tail -n1)"
  done
  printf '%s\n' "$v"
}

ensure_postgres() {
  if pg_ready; then
    log "PostgreSQL is accepting connections on $PG_HOST:$PG_PORT"
    have psql || apt_install postgresql-client
    return 0
  fi
  # Install the server when any piece is missing.
  if ! have pg_ctlcluster || ! have psql || [ -z "$(_pg_server_version)" ]; then
    log "PostgreSQL not installed; installing"
    apt_install postgresql
  fi
  local ver
  ver="$(_pg_cluster_version)"
  if [ -z "$ver" ]; then
    ver="$(_pg_server_version)"
    [ -n "$ver" ] || die "no PostgreSQL server found under /usr/lib/postgresql after install"
    log "creating PostgreSQL cluster $ver/main"
    as_root pg_createcluster "$ver" main
  fi
  # The package's postinst may already have started it.
  if ! pg_ready; then
    log "starting PostgreSQL $ver/main"
    if systemd_running; then
      as_root systemctl start "postgresql@${ver}-main"
    elif as_root pg_ctlcluster "$ver" main status >/dev/null 2>&1; then
      log "cluster $ver/main already running; waiting for it to accept connections"
    else
      as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    fi
  fi
  wait_for "PostgreSQL on $PG_HOST:$PG_PORT" \
    "See /var/log/postgresql/postgresql-${ver}-main.log and check port/listen_addresses in /etc/postgresql/${ver}/main/postgresql.conf." \
    pg_ready
}

# Run psql as the PostgreSQL superuser: OS user postgres over the local socket
# (peer auth), or PARLEY_PG_ADMIN_URL when set. Extra args go to psql; SQL on
# stdin may use psql variables (-v name=value, :'name', :"name").
psql_admin() {
  if [ -n "${PARLEY_PG_ADMIN_URL:-}" ]; then
    psql -X -q -v ON_ERROR_STOP=1 -d "$PARLEY_PG_ADMIN_URL" "$@"
  else
    id postgres >/dev/null 2>&1 ||
      die "no local OS user 'postgres': set PARLEY_PG_ADMIN_URL=postgres://postgres:PASSWORD@127.0.0.1:5432/postgres"
    # cd / so psql never complains it can't read the caller's directory.
    (cd / && as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@")
  fi
}

# --- Parley's database objects -----------------------------------------------
# Used by dev-up.sh (the shared local PostgreSQL) and e2e.sh (a private one,
# through PARLEY_PG_ADMIN_URL).

# Runtime role of a service: parley_<svc>_svc.
svc_role() { printf 'parley_%s_svc\n' "$1"; }

# service_url_var SVC: the variable holding SVC's runtime database URL
# (PARLEY_<SVC>_DATABASE_URL).
service_url_var() { printf 'PARLEY_%s_DATABASE_URL\n' "$(printf '%s' "$1" | tr '[:lower:]' '[:upper:]')"; }

# raise_rate_limits MAX: every per-client-IP limit (docs/configuration.md) to
# MAX, for runs whose whole load comes from one address.
raise_rate_limits() {
  local limit
  for limit in USER AUTH PREKEY_PUBLISH PREKEY_FETCH CHAT NOTIFICATION NOTIFICATION_CREATE; do
    export "PARLEY_${limit}_RATE_LIMIT_MAX=$1"
  done
}

# pg_ensure_role ROLE PASSWORD: create login ROLE if missing; (re)set its password.
pg_ensure_role() {
  local role="$1" pw="$2"
  log "role $role"
  psql_admin -v role="$role" -v pw="$pw" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" WITH LOGIN NOSUPERUSER PASSWORD :'pw';
SQL
}

# pg_ensure_database DB OWNER: create DB if missing, owned by OWNER.
pg_ensure_database() {
  log "database $1 (owner $2)"
  psql_admin -v db="$1" -v owner="$2" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
ALTER DATABASE :"db" OWNER TO :"owner";
SQL
}

# pg_grant_connect DB ROLE
pg_grant_connect() {
  log "grant CONNECT on $1 to $2"
  psql_admin -v db="$1" -v role="$2" <<'SQL'
GRANT CONNECT ON DATABASE :"db" TO :"role";
SQL
}

# 24 random bytes as hex: a URL-safe password with no quoting issues.
random_hex() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

# pg_url ROLE PASSWORD DB: a TCP URL to the local server.
pg_url() { printf 'postgres://%s:%s@%s:%s/%s\n' "$1" "$2" "$PG_HOST" "$PG_PORT" "$3"; }

# parley_migrate BIN OWNER_URL AMQP_URL SERVICE...: migrate each service's schema
# as the owner, grant its runtime role, and declare its queues on the broker.
parley_migrate() {
  local bin="$1" owner_url="$2" amqp_url="$3" svc
  shift 3
  for svc in "$@"; do
    log "migrating $svc (runtime role $(svc_role "$svc"))"
    DATABASE_URL="$owner_url" AMQP_URL="$amqp_url" \
      "$bin" migrate --target "$svc" --runtime-role "$(svc_role "$svc")"
  done
}

# A TCP port on 127.0.0.1 that no socket uses now: random, below the kernel's
# ephemeral range (so no outgoing connection takes it before it is bound).
free_port() {
  local low=32768 port i
  if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  fi
  [ "$low" -gt 11000 ] || low=11000
  for i in $(seq 1 200); do
    port=$((10000 + RANDOM % (low - 10000)))
    if have ss; then
      [ -z "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ] || continue
    fi
    if ! tcp_open 127.0.0.1 "$port"; then
      printf '%s\n' "$port"
      return 0
    fi
  done
  die "no free port found on 127.0.0.1"
}

# --- RabbitMQ ------------------------------------------------------------

amqp_ready() { tcp_open "$AMQP_HOST" "$AMQP_PORT"; }

ensure_rabbitmq() {
  if amqp_ready; then
    log "RabbitMQ is accepting connections on $AMQP_HOST:$AMQP_PORT"
    return 0
  fi
  # Debian puts rabbitmq-server in /usr/sbin, which a non-root PATH may lack.
  if ! have rabbitmq-server && [ ! -x /usr/sbin/rabbitmq-server ]; then
    log "RabbitMQ not installed; installing"
    apt_install rabbitmq-server
  fi
  # The package's postinst may already have started it.
  if ! amqp_ready; then
    log "starting RabbitMQ"
    if systemd_running; then
      as_root systemctl start rabbitmq-server
    else
      # Fails harmlessly if the node is already booting; the wait decides.
      as_root /usr/sbin/rabbitmq-server -detached ||
        warn "rabbitmq-server -detached failed (already starting?)"
    fi
  fi
  wait_for "RabbitMQ on $AMQP_HOST:$AMQP_PORT" \
    "See /var/log/rabbitmq/ (and 'rabbitmqctl status')." \
    amqp_ready
  # The listener is up; let the broker finish booting (bounded).
  if [ -x /usr/sbin/rabbitmqctl ]; then
    as_root timeout "$PARLEY_WAIT_SECS" /usr/sbin/rabbitmqctl -q await_startup >/dev/null 2>&1 ||
      warn "rabbitmqctl await_startup did not confirm startup; continuing since port $AMQP_PORT is open"
  fi
}

# --- Node.js (the official socket.io-client compatibility tests) -----------

# Installs Node.js and npm from Debian when missing, then the pinned
# socket.io-client of tests-compat/ (npm ci: exactly the lock file).
ensure_node_compat() {
  if ! have node || ! have npm; then
    log "Node.js/npm not installed; installing"
    apt_install nodejs npm
  fi
  local dir="$PARLEY_ROOT/tests-compat"
  if [ ! -d "$dir/node_modules/socket.io-client" ] ||
    [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    log "installing tests-compat dependencies (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) ||
      die "npm ci in tests-compat failed"
  else
    log "tests-compat dependencies are installed"
  fi
}

# --- Python venv (offline Kubernetes schema validation tools) ---------------

ensure_python_venv() {
  local python="${PYTHON:-python3}"
  have "$python" || apt_install python3
  if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "python3 venv support missing; installing"
    apt_install python3-venv
  fi
}
