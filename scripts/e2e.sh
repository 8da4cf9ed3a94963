#!/usr/bin/env bash
# End-to-end tests: start a whole Parley platform on private dependencies, run
# the black-box suite (tests-e2e) against its public URL, and tear it all down.
#
#   scripts/e2e.sh                  # monolithic: one `parley serve --target all`
#   scripts/e2e.sh microservices    # user, notification and TWO chat processes
#                                   # behind one nginx front that routes by prefix
#   scripts/e2e.sh monolithic -- two_users   # extra args go to the test binaries
#
# Everything is private to this run and on 127.0.0.1 with random ports: a
# PostgreSQL cluster (initdb in a temporary directory) and a RabbitMQ node (its
# own node name, ports, data and cookie), so the resilience tests can restart
# them without touching the machine's shared services. The suite's SMTP sink
# listens where the platform sends email. Everything started is stopped at exit.
#
# Environment:
#   E2E_KEEP_DIR=1        keep the temporary directory (logs, data) after the run
#   E2E_OUTAGE_SECS=3     how long a restart keeps PostgreSQL/RabbitMQ down
#   PARLEY_WAIT_SECS=60   bound of every wait (see lib.sh)
# The suite itself reads E2E_BASE_URL, E2E_INSECURE_TLS, E2E_SMTP_LISTEN,
# E2E_JWT_SIGNING_KEY_FILE, E2E_RESTART_POSTGRES and E2E_RESTART_RABBITMQ; this
# script sets them (README, "End-to-end tests").
set -euo pipefail

MODE="monolithic"
test_args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    monolithic | microservices) MODE="$1" ;;
    -h | --help)
      sed -n '2,24p' "$0"
      exit 0
      ;;
    --)
      shift
      test_args=("$@")
      break
      ;;
    *)
      printf 'usage: scripts/e2e.sh [monolithic|microservices] [-- TEST-ARGS...]\n' >&2
      exit 2
      ;;
  esac
  shift
done

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PARLEY_ROOT"

SERVICES=(user chat notification)
DB_NAME=parley
OWNER_ROLE=parley_owner
OUTAGE_SECS="${E2E_OUTAGE_SECS:-3}"
[[ "$OUTAGE_SECS" =~ ^[0-9]+$ ]] || die "E2E_OUTAGE_SECS must be a number of seconds"
started_at=$SECONDS

# --- tools -----------------------------------------------------------------------

ensure_rust
have psql || apt_install postgresql-client
pg_version="$(_pg_server_version)"
if [ -z "$pg_version" ]; then
  apt_install postgresql
  pg_version="$(_pg_server_version)"
fi
PG_BIN="/usr/lib/postgresql/$pg_version/bin"
[ -x "$PG_BIN/initdb" ] || die "no initdb under $PG_BIN"
RABBIT_BIN=/usr/lib/rabbitmq/bin
if [ ! -x "$RABBIT_BIN/rabbitmq-server" ]; then
  apt_install rabbitmq-server
fi
[ -x "$RABBIT_BIN/rabbitmq-server" ] || die "no rabbitmq-server under $RABBIT_BIN"
if [ "$MODE" = microservices ] && ! have nginx && [ ! -x /usr/sbin/nginx ]; then
  apt_install nginx
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# --- the run's directory and teardown --------------------------------------------

WORK="$(mktemp -d /tmp/parley-e2e.XXXXXX)"
chmod 755 "$WORK"
PIDS=()

cleanup() {
  local status=$?
  set +e
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    # Bounded: parley's shutdown grace is set to 2 s below.
    timeout 15 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -9 "$pid" 2>/dev/null
  done
  if [ -f "$WORK/rabbit.env" ]; then
    "$WORK/rabbitmq.sh" stop >/dev/null 2>&1
  fi
  if [ -f "$WORK/pg/PG_VERSION" ]; then
    "$WORK/postgres.sh" stop >/dev/null 2>&1
  fi
  if [ "$status" -ne 0 ]; then
    warn "e2e ($MODE) failed; logs:"
    for f in "$WORK"/*.log "$WORK"/pglog/*.log "$WORK"/rabbit/log/*.log "$WORK"/nginx/error.log; do
      [ -f "$f" ] || continue
      printf -- '--- %s (last 40 lines)\n' "$f" >&2
      grep -v "will retry" "$f" | tail -n 40 >&2
    done
  fi
  if [ "${E2E_KEEP_DIR:-0}" = 1 ]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- private PostgreSQL -----------------------------------------------------------

PG_PORT="$(free_port)"
# PostgreSQL refuses to run as root: as root, run it as the postgres OS user.
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' OS user"
  PG_USER=postgres
  install -d -o postgres -g postgres "$WORK/pg" "$WORK/pgsock" "$WORK/pglog"
else
  PG_USER=""
  mkdir -p "$WORK/pg" "$WORK/pgsock" "$WORK/pglog"
fi

# One script starts, stops and restarts it; the suite gets "restart".
cat >"$WORK/postgres.sh" <<EOF
#!/usr/bin/env bash
# Private PostgreSQL of one e2e run: start | stop | restart (down ${OUTAGE_SECS}s).
set -euo pipefail
pg() {
  if [ -n "$PG_USER" ]; then
    (cd / && runuser -u "$PG_USER" -- "\$@")
  else
    "\$@"
  fi
}
ctl() { pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pglog/postgres.log" -t 60 "\$@"; }
case "\$1" in
  start) ctl -w -o "-p $PG_PORT -k $WORK/pgsock -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null ;;
  stop) ctl -w -m fast stop >/dev/null ;;
  restart) "\$0" stop; sleep $OUTAGE_SECS; "\$0" start ;;
esac
EOF
chmod 755 "$WORK/postgres.sh"

log "private PostgreSQL $pg_version on 127.0.0.1:$PG_PORT"
if [ -n "$PG_USER" ]; then
  (cd / && runuser -u "$PG_USER" -- "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$WORK/initdb.log")
else
  "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$WORK/initdb.log"
fi
"$WORK/postgres.sh" start
export PARLEY_PG_ADMIN_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"

# --- private RabbitMQ ---------------------------------------------------------------

AMQP_PORT="$(free_port)"
DIST_PORT="$(free_port)"
NODE="parley-e2e-$$@localhost"
mkdir -p "$WORK/rabbit/home" "$WORK/rabbit/log" "$WORK/rabbit/mnesia"
chmod 700 "$WORK/rabbit/home"
cat >"$WORK/rabbit/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
EOF
echo '[].' >"$WORK/rabbit/enabled_plugins"
: >"$WORK/rabbit/rabbitmq-env.conf"
# Every path and port of the node is its own; HOME holds its Erlang cookie.
cat >"$WORK/rabbit.env" <<EOF
export HOME="$WORK/rabbit/home"
export RABBITMQ_NODENAME="$NODE"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$AMQP_PORT
export RABBITMQ_DIST_PORT=$DIST_PORT
export RABBITMQ_CONFIG_FILE="$WORK/rabbit/rabbitmq.conf"
export RABBITMQ_CONF_ENV_FILE="$WORK/rabbit/rabbitmq-env.conf"
export RABBITMQ_ENABLED_PLUGINS_FILE="$WORK/rabbit/enabled_plugins"
export RABBITMQ_MNESIA_BASE="$WORK/rabbit/mnesia"
export RABBITMQ_LOG_BASE="$WORK/rabbit/log"
export RABBITMQ_PID_FILE="$WORK/rabbit/rabbit.pid"
export ERL_EPMD_ADDRESS=127.0.0.1
EOF
cat >"$WORK/rabbitmq.sh" <<EOF
#!/usr/bin/env bash
# Private RabbitMQ node of one e2e run: start | stop | restart (down ${OUTAGE_SECS}s).
set -euo pipefail
. "$WORK/rabbit.env"
ctl() { timeout 60 "$RABBIT_BIN/rabbitmqctl" -q -n "$NODE" "\$@"; }
case "\$1" in
  start)
    "$RABBIT_BIN/rabbitmq-server" >>"$WORK/rabbit/log/console.log" 2>&1 &
    ctl wait --timeout 60 "$WORK/rabbit/rabbit.pid" >/dev/null
    ctl await_startup >/dev/null
    ;;
  stop) ctl stop "$WORK/rabbit/rabbit.pid" >/dev/null ;;
  restart) "\$0" stop; sleep $OUTAGE_SECS; "\$0" start ;;
esac
EOF
chmod 755 "$WORK/rabbitmq.sh"
log "private RabbitMQ node $NODE on 127.0.0.1:$AMQP_PORT"
"$WORK/rabbitmq.sh" start
AMQP_URL_E2E="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"

# --- build, roles, keys, migrations ------------------------------------------------

log "building parley and the suite (debug)"
cargo build --locked --workspace --bins
cargo test --locked --workspace --no-run --test lifecycle --test authorization --test bad_input --test resilience
bin="${CARGO_TARGET_DIR:-target}/debug/parley"
[ -x "$bin" ] || die "$bin missing after the build"

# Trust auth on the private cluster: the passwords only make the URLs realistic.
owner_pw="e2e-owner"
pg_ensure_role "$OWNER_ROLE" "$owner_pw"
pg_ensure_database "$DB_NAME" "$OWNER_ROLE"
for svc in "${SERVICES[@]}"; do
  pg_ensure_role "$(svc_role "$svc")" "e2e-$svc"
  pg_grant_connect "$DB_NAME" "$(svc_role "$svc")"
done
db_url() { printf 'postgres://%s:%s@127.0.0.1:%s/%s\n' "$1" "$2" "$PG_PORT" "$DB_NAME"; }
(umask 077 && "$bin" keys generate --out "$WORK/keys" >/dev/null)
parley_migrate "$bin" "$(db_url "$OWNER_ROLE" "$owner_pw")" "$AMQP_URL_E2E" "${SERVICES[@]}"

# --- the platform -----------------------------------------------------------------

SMTP_PORT="$(free_port)"
PUBLIC_PORT="$(free_port)"
for svc in "${SERVICES[@]}"; do
  var="$(service_url_var "$svc")"
  export "$var=$(db_url "$(svc_role "$svc")" "e2e-$svc")"
done
export DATABASE_URL="$PARLEY_USER_DATABASE_URL"
export AMQP_URL="$AMQP_URL_E2E"
export PARLEY_JWT_SIGNING_KEY_FILE="$WORK/keys/jwt-signing.pem"
export PARLEY_JWT_JWKS_FILE="$WORK/keys/jwks.json"
export PUBLIC_URL="http://127.0.0.1:$PUBLIC_PORT"
export SMTP_HOST=127.0.0.1 SMTP_PORT="$SMTP_PORT"
# The suite's SMTP sink comes and goes with each test binary: retry often.
export PARLEY_EMAIL_RETRY_MAX_SECS=2
export PARLEY_SHUTDOWN_GRACE_SECS=2
# The suite registers many users from one address, and cost 12 only slows it.
export PARLEY_BCRYPT_COST=4
raise_rate_limits 1000000
export PARLEY_LOG="${PARLEY_LOG:-info}"

# serve NAME TARGET PORT: one parley process in the background.
serve() {
  log "parley serve --target $2 on 127.0.0.1:$3 ($1)"
  "$bin" serve --target "$2" --listen "127.0.0.1:$3" >"$WORK/parley-$1.log" 2>&1 &
  PIDS+=("$!")
}

wait_ready() {
  wait_for "$1 ready" "See $WORK/parley-*.log" \
    curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$2/readyz"
}

have curl || apt_install curl

if [ "$MODE" = monolithic ]; then
  serve all all "$PUBLIC_PORT"
  wait_ready "parley (all)" "$PUBLIC_PORT"
else
  export PARLEY_TRUST_PROXY_HOPS=1
  USER_PORT="$(free_port)"
  CHAT1_PORT="$(free_port)"
  CHAT2_PORT="$(free_port)"
  NOTIFICATION_PORT="$(free_port)"
  serve user user "$USER_PORT"
  serve chat-1 chat "$CHAT1_PORT"
  serve chat-2 chat "$CHAT2_PORT"
  serve notification notification "$NOTIFICATION_PORT"
  for port in "$USER_PORT" "$CHAT1_PORT" "$CHAT2_PORT" "$NOTIFICATION_PORT"; do
    wait_ready "parley on $port" "$port"
  done
  # The front: routes by the contract's prefixes, unchanged paths (each target
  # serves its public paths itself). Sockets get their own round-robin so that
  # consecutive connections alternate between the two chat replicas.
  mkdir -p "$WORK/nginx/tmp"
  cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log $WORK/nginx/access.log;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  # The original gateway's limit: parley itself answers 413 past 100 kB.
  client_max_body_size 20m;
  server_tokens off;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream user { server 127.0.0.1:$USER_PORT; keepalive 8; }
  upstream chat { server 127.0.0.1:$CHAT1_PORT; server 127.0.0.1:$CHAT2_PORT; keepalive 8; }
  upstream chat_socket { server 127.0.0.1:$CHAT1_PORT; server 127.0.0.1:$CHAT2_PORT; }
  upstream notification { server 127.0.0.1:$NOTIFICATION_PORT; keepalive 8; }
  server {
    listen 127.0.0.1:$PUBLIC_PORT;
    proxy_http_version 1.1;
    proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_set_header Connection "";
    location /user/ { proxy_pass http://user; }
    location /api/user/ { proxy_pass http://user; }
    location = /health { proxy_pass http://user; }
    location = /readyz { proxy_pass http://user; }
    location /notifications/ { proxy_pass http://notification; }
    location /notification/ { proxy_pass http://notification; }
    location /chat/ { proxy_pass http://chat; }
    location /chat/socket.io/ {
      proxy_pass http://chat_socket;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_buffering off;
    }
  }
}
EOF
  log "nginx front on 127.0.0.1:$PUBLIC_PORT (user, 2 x chat, notification)"
  "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
  PIDS+=("$!")
  wait_ready "the front" "$PUBLIC_PORT"
fi

# --- the suite ----------------------------------------------------------------------

export E2E_BASE_URL="http://127.0.0.1:$PUBLIC_PORT"
export E2E_SMTP_LISTEN="127.0.0.1:$SMTP_PORT"
export E2E_JWT_SIGNING_KEY_FILE="$WORK/keys/jwt-signing.pem"
export E2E_RESTART_POSTGRES="$WORK/postgres.sh restart"
export E2E_RESTART_RABBITMQ="$WORK/rabbitmq.sh restart"
unset E2E_INSECURE_TLS
log "platform ($MODE) up after $((SECONDS - started_at))s; running tests-e2e against $E2E_BASE_URL"
suite_started=$SECONDS
cargo test --locked --workspace --test lifecycle --test authorization --test bad_input --test resilience \
  -- "${test_args[@]}"
log "tests-e2e ($MODE) passed in $((SECONDS - suite_started))s (whole run $((SECONDS - started_at))s)"
