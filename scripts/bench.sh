#!/usr/bin/env bash
# Benchmarks: run one load-generator scenario against a fresh monolithic Parley.
#
#   scripts/bench.sh <scenario> [parley-loadgen args...]
#   scripts/bench.sh all            # every scenario in turn, each on a fresh server
#   scripts/bench.sh report         # the markdown of every result in target/bench/
#   scripts/bench.sh chart          # docs/performance-latency.svg from target/bench/sweep.json
#
# Scenarios: messaging, sweep, capacity, reads, login-flood, bundles
# (`target/release/parley-loadgen <scenario> --help` lists their flags).
#
# For each scenario it: installs/starts PostgreSQL and RabbitMQ when missing
# (scripts/lib.sh), builds `parley` and `parley-loadgen` in release, recreates
# the database $PARLEY_BENCH_DB (default parley_bench; no other database is
# touched) with an owner role and DML-only runtime roles, generates fresh JWT
# keys, migrates, raises `ulimit -n` to the hard limit, starts
# `parley serve --target all` on a random loopback port (several replicas for
# `capacity` when one process may not hold 100,000 sockets) with the benchmark
# settings below, samples the server's RSS from /proc every second, runs the
# scenario, writes target/bench/<scenario>.json (+ .md, .rss.csv, .server.log)
# and prints the markdown summary. The server is stopped at exit.
#
# Server settings (printed at start): bcrypt cost 12 (the default), every
# per-IP rate limit raised to 1e9 (all load comes from one IP),
# PARLEY_LOG=warn, events exchange `parley.bench` (its queues are emptied
# first), PGSSLMODE=disable (below). Everything else is the default
# configuration.
#
# Environment:
#   PARLEY_BENCH_DB=parley_bench     database to recreate (must start with parley_bench)
#   PARLEY_BENCH_OUT=target/bench    where results go
#   PARLEY_BENCH_PORT=               server port (default: a free random one)
#   PARLEY_BENCH_BCRYPT_COST=12      bcrypt cost of the server
#   PARLEY_BENCH_PG_SSLMODE=disable  the server's PGSSLMODE: plaintext, as the operator's
#                                    managed PostgreSQL (which offers no TLS) is reached;
#                                    `prefer` measures TLS to a local server that offers it
#   PARLEY_BENCH_SERVER_ARGS=        extra `parley serve` flags, e.g. "--chat-writers 8"
#   PARLEY_BENCH_NO_BUILD=1          use the existing release binaries
#   PARLEY_BENCH_PERF=1              record a CPU profile of the server with
#                                    `perf record -e cpu-clock` into <scenario>.perf.data
#                                    and print its top functions
#   PARLEY_BENCH_HEAPTRACK=1         record the server's heap with heaptrack into
#                                    <scenario>.heaptrack.zst and print where the
#                                    memory still held at exit was allocated
#   PARLEY_BENCH_KEEP_DB=1           keep the database after the run
#   PARLEY_BENCH_REPLICAS=           servers to start: monolithic replicas on the one
#                                    database and broker, each on its own port. Default 1;
#                                    for `capacity`, as many as 100,000 sockets need when one
#                                    process may not open that many files (each replica
#                                    then gets PARLEY_DB_MAX_CONNECTIONS=4 unless it is set,
#                                    to stay within PostgreSQL's max_connections)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

[ "$#" -ge 1 ] || {
  usage >&2
  exit 2
}
scenario="$1"
shift

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PARLEY_ROOT"

OUT="${PARLEY_BENCH_OUT:-$PARLEY_ROOT/target/bench}"
DB_NAME="${PARLEY_BENCH_DB:-parley_bench}"
BCRYPT_COST="${PARLEY_BENCH_BCRYPT_COST:-12}"
EXCHANGE=parley.bench
SERVICES=(user chat notification)
OWNER_ROLE=parley_bench_owner
LOADGEN="$PARLEY_ROOT/target/release/parley-loadgen"
PARLEY_BIN="$PARLEY_ROOT/target/release/parley"
SCENARIOS=(messaging sweep capacity reads login-flood bundles)

case "$DB_NAME" in
  parley_bench*) ;;
  *) die "PARLEY_BENCH_DB must start with parley_bench (it is dropped and recreated)" ;;
esac
mkdir -p "$OUT"

build() {
  if [ "${PARLEY_BENCH_NO_BUILD:-0}" = 1 ]; then
    [ -x "$PARLEY_BIN" ] && [ -x "$LOADGEN" ] || die "PARLEY_BENCH_NO_BUILD=1 but the release binaries are missing"
    return 0
  fi
  ensure_rust
  log "building parley and parley-loadgen (release)"
  cargo build --release --bin parley --bin parley-loadgen
}

case "$scenario" in
  -h | --help)
    usage
    exit 0
    ;;
  all)
    [ "$#" -eq 0 ] || die "'all' runs every scenario with its defaults and takes no arguments"
    for s in "${SCENARIOS[@]}"; do
      "${BASH_SOURCE[0]}" "$s"
      PARLEY_BENCH_NO_BUILD=1
      export PARLEY_BENCH_NO_BUILD
    done
    exec "${BASH_SOURCE[0]}" report
    ;;
  report)
    # Each scenario's markdown (the load generator's summary plus the CPU
    # table of this script), in scenario order.
    found=0
    for s in "${SCENARIOS[@]}"; do
      if [ -f "$OUT/$s.md" ]; then
        cat "$OUT/$s.md"
        printf '\n'
        found=1
      fi
    done
    [ "$found" = 1 ] || die "no results in $OUT"
    exit 0
    ;;
  chart)
    build
    exec "$LOADGEN" chart --in "$OUT/sweep.json" --svg "${1:-$PARLEY_ROOT/docs/performance-latency.svg}"
    ;;
  messaging | sweep | capacity | reads | login-flood | bundles) ;;
  *)
    usage >&2
    die "unknown scenario: $scenario"
    ;;
esac

# --- 1. dependencies and binaries ------------------------------------------

ensure_postgres
ensure_rabbitmq
build

# --- 2. machine settings for this run ----------------------------------------

server_pid=""
replica_pids=()
sampler_pid=""
restore_somaxconn=""
cleanup() {
  local status=$?
  if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null || true; fi
  for p in "${replica_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    log "stopping the server (pid $server_pid)"
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  for p in "${replica_pids[@]}"; do
    for _ in $(seq 1 60); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ -n "$restore_somaxconn" ]; then
    log "restoring net.core.somaxconn=$restore_somaxconn"
    as_root sysctl -q -w "net.core.somaxconn=$restore_somaxconn" || true
  fi
  if [ "${PARLEY_BENCH_KEEP_DB:-0}" != 1 ] && [ -n "${db_created:-}" ]; then
    psql_admin -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Open files: as many as the hard limit allows (server and load generator
# inherit it). Raising the hard limit itself needs CAP_SYS_RESOURCE.
soft_before="$(ulimit -Sn)"
hard="$(ulimit -Hn)"
ulimit -Sn "$hard"
log "open files: soft limit $soft_before -> $(ulimit -Sn) (hard limit $hard)"
if [ "$scenario" = capacity ] && [ "$hard" != unlimited ] && [ "$hard" -lt 101000 ]; then
  if ulimit -Hn 1048576 2>/dev/null; then
    ulimit -Sn 1048576
    log "open files: raised the hard limit to 1048576"
  else
    log "the hard limit of open files is $hard and cannot be raised here (no CAP_SYS_RESOURCE): each server and load-generator process holds at most ~$((hard - 1500)) sockets, so the capacity run uses several"
  fi
fi
nofile="$(ulimit -Sn)"
somaxconn="$(cat /proc/sys/net/core/somaxconn)"
port_range="$(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)"
log "kernel: net.core.somaxconn=$somaxconn, net.ipv4.ip_local_port_range=$port_range (each 127.0.0.x source address has that many ports)"
if [ "$scenario" = capacity ] && [ "$somaxconn" -lt 4096 ]; then
  if as_root sysctl -q -w net.core.somaxconn=4096; then
    restore_somaxconn="$somaxconn"
    log "raised net.core.somaxconn $somaxconn -> 4096 for this run"
  fi
fi

# --- 3. database, keys, migrations ---------------------------------------------

owner_pw="$(random_hex)"
pg_ensure_role "$OWNER_ROLE" "$owner_pw"
log "recreating database $DB_NAME"
psql_admin -c "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null
db_created=1
pg_ensure_database "$DB_NAME" "$OWNER_ROLE"
declare -A svc_pw=()
for svc in "${SERVICES[@]}"; do
  role="parley_bench_${svc}_svc"
  svc_pw[$svc]="$(random_hex)"
  pg_ensure_role "$role" "${svc_pw[$svc]}"
  pg_grant_connect "$DB_NAME" "$role"
done

# Empty the bench exchange's queues left by an earlier run (only ours).
if [ -x /usr/sbin/rabbitmqctl ]; then
  as_root /usr/sbin/rabbitmqctl -q list_queues name 2>/dev/null |
    { grep -E "^${EXCHANGE//./\\.}\\." || true; } | while read -r queue; do
    as_root /usr/sbin/rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
  done
fi

AMQP='amqp://guest:guest@127.0.0.1:5672/%2f'
keys="$OUT/keys"
rm -rf "$keys"
(umask 077 && "$PARLEY_BIN" keys generate --out "$keys" >/dev/null)
for svc in "${SERVICES[@]}"; do
  DATABASE_URL="$(pg_url "$OWNER_ROLE" "$owner_pw" "$DB_NAME")" AMQP_URL="$AMQP" \
    PARLEY_EVENTS_EXCHANGE="$EXCHANGE" PARLEY_LOG=warn \
    "$PARLEY_BIN" migrate --target "$svc" --runtime-role "parley_bench_${svc}_svc"
done

# --- 4. servers ----------------------------------------------------------------

# Capacity: 100,000 sockets, or as many as the open-files limit allows; when
# one process cannot hold them, several replicas share them (and the load
# generator spreads its sockets over as many worker processes).
connections_given=0
if printf '%s\n' "$@" | grep -q -- '^--connections'; then connections_given=1; fi
per_process=$((nofile - 1500))
replicas="${PARLEY_BENCH_REPLICAS:-}"
if [ -z "$replicas" ]; then
  replicas=1
  if [ "$scenario" = capacity ] && [ "$connections_given" = 0 ] && [ "$per_process" -lt 100000 ]; then
    replicas=$(((100000 + per_process - 1) / per_process))
  fi
fi
case "$replicas" in
  '' | *[!0-9]* | 0) die "PARLEY_BENCH_REPLICAS must be a positive number" ;;
esac
if [ "$replicas" -gt 1 ]; then
  if [ "${PARLEY_BENCH_PERF:-0}" = 1 ] || [ "${PARLEY_BENCH_HEAPTRACK:-0}" = 1 ]; then
    die "PARLEY_BENCH_PERF and PARLEY_BENCH_HEAPTRACK profile one server: set PARLEY_BENCH_REPLICAS=1"
  fi
  export PARLEY_DB_MAX_CONNECTIONS="${PARLEY_DB_MAX_CONNECTIONS:-4}"
  log "$replicas replicas (PARLEY_DB_MAX_CONNECTIONS=$PARLEY_DB_MAX_CONNECTIONS each)"
fi

port="${PARLEY_BENCH_PORT:-$(free_port)}"
for svc in "${SERVICES[@]}"; do
  var="$(service_url_var "$svc")"
  export "$var=$(pg_url "parley_bench_${svc}_svc" "${svc_pw[$svc]}" "$DB_NAME")"
done
export DATABASE_URL="$PARLEY_USER_DATABASE_URL"
export AMQP_URL="$AMQP"
export PARLEY_EVENTS_EXCHANGE="$EXCHANGE"
export PARLEY_JWT_SIGNING_KEY_FILE="$keys/jwt-signing.pem"
export PARLEY_JWT_JWKS_FILE="$keys/jwks.json"
export PARLEY_BCRYPT_COST="$BCRYPT_COST"
export PARLEY_LOG=warn
export PGSSLMODE="${PARLEY_BENCH_PG_SSLMODE:-disable}"
RATE_LIMIT=1000000000
raise_rate_limits "$RATE_LIMIT"

# shellcheck disable=SC2206 # word splitting of the extra flags is intended
server_cmd=("$PARLEY_BIN" serve --target all --listen "127.0.0.1:$port" ${PARLEY_BENCH_SERVER_ARGS:-})
if [ "${PARLEY_BENCH_PERF:-0}" = 1 ]; then
  have perf || die "PARLEY_BENCH_PERF=1 needs perf (apt-get install linux-perf)"
  server_cmd=(perf record -q -F 999 -e cpu-clock -o "$OUT/$scenario.perf.data" -- "${server_cmd[@]}")
fi
if [ "${PARLEY_BENCH_HEAPTRACK:-0}" = 1 ]; then
  have heaptrack || apt_install heaptrack
  rm -f "$OUT/$scenario.heaptrack".*
  server_cmd=(heaptrack -o "$OUT/$scenario.heaptrack" "${server_cmd[@]}")
fi
log "server: ${server_cmd[*]} (bcrypt cost $BCRYPT_COST, rate limits $RATE_LIMIT, exchange $EXCHANGE, PGSSLMODE=$PGSSLMODE)"
"${server_cmd[@]}" >"$OUT/$scenario.server.log" 2>&1 &
server_pid=$!
replica_ports=()
replica_pids=()
for i in $(seq 2 "$replicas"); do
  replica_port="$(free_port)"
  # shellcheck disable=SC2206 # as above
  replica_cmd=("$PARLEY_BIN" serve --target all --listen "127.0.0.1:$replica_port" ${PARLEY_BENCH_SERVER_ARGS:-})
  log "replica $i: ${replica_cmd[*]}"
  "${replica_cmd[@]}" >"$OUT/$scenario.server-$i.log" 2>&1 &
  replica_pids+=("$!")
  replica_ports+=("$replica_port")
done
if [ "${PARLEY_BENCH_PERF:-0}" = 1 ] || [ "${PARLEY_BENCH_HEAPTRACK:-0}" = 1 ]; then
  # The server is the profiler's child.
  for _ in $(seq 1 50); do
    child="$(pgrep -P "$server_pid" -x parley || true)"
    [ -n "$child" ] && break
    sleep 0.1
  done
  [ -n "$child" ] || die "the server did not start under the profiler"
  parley_pid="$child"
else
  parley_pid="$server_pid"
fi
have curl || apt_install curl
for p in "$port" "${replica_ports[@]}"; do
  ready() { curl -fs -o /dev/null "http://127.0.0.1:$p/readyz"; }
  wait_for "parley on 127.0.0.1:$p" "See $OUT/$scenario.server*.log." ready
done
log "server pid $parley_pid, open files limit $(awk '/Max open files/ {print $4}' "/proc/$parley_pid/limits")"
[ "$replicas" -eq 1 ] || log "replica pids ${replica_pids[*]} on ports ${replica_ports[*]}"

# RSS every second, for the record: one column per server.
all_pids=("$parley_pid" "${replica_pids[@]}")
(
  printf 'unix_time'
  printf ',rss_kib_%s' "${all_pids[@]}"
  printf '\n'
  while kill -0 "$parley_pid" 2>/dev/null; do
    printf '%s' "$(date +%s)"
    for p in "${all_pids[@]}"; do
      printf ',%s' "$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)"
    done
    printf '\n'
    sleep 1
  done
) >"$OUT/$scenario.rss.csv" 2>/dev/null &
sampler_pid=$!

# CPU seconds so far: the whole machine (busy time in /proc/stat), then
# processes grouped by name. Clock ticks are 1/100 s.
cpu_snapshot() {
  awk '/^cpu / {printf "machine %.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / 100}' /proc/stat
  # Processes come and go meanwhile: cat may fail on some of them.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
      line = $0; sub(/^[0-9]+ \(/, "", line); comm = line; sub(/\) .*/, "", comm)
      rest = line; sub(/^.*\) /, "", rest); split(rest, f, " ")
      group = "other"
      if (comm == "parley") group = "parley"
      else if (comm == "parley-loadgen") group = "loadgen"
      else if (comm ~ /^postgres/) group = "postgres"
      else if (comm ~ /^(beam|erl_child|epmd|inet_gethost)/) group = "rabbitmq"
      t[group] += (f[12] + f[13]) / 100
    } END { for (g in t) if (g != "other") printf "%s %.2f\n", g, t[g] }'
}

# --- 5. the scenario -------------------------------------------------------------

extra=()
if [ "$scenario" = capacity ] && [ "$connections_given" = 0 ]; then
  # 100,000 when the servers' open-files limits allow it (one per connection).
  max=$((per_process * replicas))
  [ "$max" -gt 100000 ] && max=100000
  extra+=(--connections "$max")
  log "capacity: --connections $max over $replicas server(s) (open-files limit $nofile each)"
fi
for i in "${!replica_ports[@]}"; do
  extra+=(--replica "http://127.0.0.1:${replica_ports[$i]}" --replica-pid "${replica_pids[$i]}")
done
log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
cpu_before="$(cpu_snapshot)"
loadgen_start=$SECONDS
"$LOADGEN" "$scenario" --base-url "http://127.0.0.1:$port" --server-pid "$parley_pid" \
  --out "$OUT/$scenario.json" --markdown "$OUT/$scenario.md" "${extra[@]}" "$@"
cpu_after="$(cpu_snapshot)"
# The loadgen has exited: its own CPU time is in its report; the rest here.
{
  printf '\nCPU seconds used on this machine during the scenario (%s s wall, setup included; 2 CPUs = %s CPU-s available):\n\n' \
    "$((SECONDS - loadgen_start))" "$(($(nproc) * (SECONDS - loadgen_start)))"
  printf '| machine (all processes) | parley server | PostgreSQL (all databases) | RabbitMQ | other processes |\n|---:|---:|---:|---:|---:|\n'
  awk 'NR == FNR {before[$1] = $2; next} {after[$1] = $2}
    END {
      m = after["machine"] - before["machine"]
      p = after["parley"] - before["parley"]; g = after["postgres"] - before["postgres"]
      r = after["rabbitmq"] - before["rabbitmq"]
      printf "| %.1f | %.1f | %.1f | %.1f | %.1f (load generator, other users) |\n", m, p, g, r, m - p - g - r
    }' <(printf '%s\n' "$cpu_before") <(printf '%s\n' "$cpu_after")
} | tee -a "$OUT/$scenario.md"

if [ "$scenario" = sweep ]; then
  "$LOADGEN" chart --in "$OUT/sweep.json" --svg "$OUT/sweep.svg"
fi
if [ "${PARLEY_BENCH_PERF:-0}" = 1 ]; then
  kill -INT "$parley_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  log "top of the server's CPU profile ($OUT/$scenario.perf.data):"
  perf report -i "$OUT/$scenario.perf.data" --no-children --sort symbol --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -40 | tee "$OUT/$scenario.perf.txt"
fi
if [ "${PARLEY_BENCH_HEAPTRACK:-0}" = 1 ]; then
  # heaptrack reports the peak heap: for `capacity`, while every socket was open.
  kill -TERM "$parley_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  profile="$(ls "$OUT/$scenario.heaptrack".* 2>/dev/null | head -1)"
  [ -n "$profile" ] || die "heaptrack wrote no profile"
  log "the server's peak heap, by allocation site ($profile):"
  heaptrack_print -f "$profile" --print-peaks 1 --print-allocators 0 --print-temporary 0 \
    --print-leaks 0 --peak-limit 25 --merge-backtraces 1 --print-histogram 0 2>/dev/null |
    tee "$OUT/$scenario.heaptrack.txt" | head -200
fi
