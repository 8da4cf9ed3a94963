#!/usr/bin/env bash
# Quick start, command 2: run every check and test.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/test.sh [--no-lint] [-- ARGS...]

Installs/starts PostgreSQL and RabbitMQ when needed, creates the test role
parley_test, then runs in order:
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
  cargo nextest run --workspace --locked   (then cargo test --doc), or
  cargo test --workspace --locked          when cargo-nextest is absent
    (both without tests-e2e, which needs a running platform)
  the Kubernetes manifest validation      (without a filter)
  scripts/e2e.sh monolithic               (without a filter): the end-to-end
                                          suite against a whole local platform

Options:
  --no-lint   skip cargo fmt and cargo clippy
  -h, --help  show this help
  -- ARGS     pass ARGS to the test runner (e.g. -- -p parley-user)

Environment (kept when already set):
  PARLEY_TEST_DATABASE_URL  default postgres://parley_test:parley_test@127.0.0.1:5432/postgres
                            (when set, the parley_test role is not created)
  PARLEY_TEST_AMQP_URL      default amqp://guest:guest@127.0.0.1:5672/%2f
EOF
}

lint=1
runner_args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --no-lint) lint=0 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      runner_args=("$@")
      break
      ;;
    *)
      usage >&2
      printf 'error: unknown argument: %s\n' "$1" >&2
      exit 2
      ;;
  esac
  shift
done

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PARLEY_ROOT"

# --- 1. dependencies ------------------------------------------------------

ensure_rust
ensure_postgres
ensure_rabbitmq
ensure_node_compat

# --- 2. test role and URLs -------------------------------------------------

# Tests create one database per test, and their own roles.
if [ -z "${PARLEY_TEST_DATABASE_URL:-}" ]; then
  log "role parley_test (LOGIN CREATEDB CREATEROLE)"
  psql_admin -f - <<'SQL'
SELECT 'CREATE ROLE parley_test LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'parley_test') \gexec
ALTER ROLE parley_test WITH LOGIN CREATEDB CREATEROLE NOSUPERUSER PASSWORD 'parley_test';
SQL
  export PARLEY_TEST_DATABASE_URL='postgres://parley_test:parley_test@127.0.0.1:5432/postgres'
else
  log "using PARLEY_TEST_DATABASE_URL from the environment"
fi
# RabbitMQ's guest user may connect over loopback by default: nothing to create.
export PARLEY_TEST_AMQP_URL="${PARLEY_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

# Fail early and clearly if the test role can't log in over TCP.
psql -X -q -At -d "$PARLEY_TEST_DATABASE_URL" -c 'SELECT 1' >/dev/null ||
  die "cannot connect with PARLEY_TEST_DATABASE_URL (password auth on 127.0.0.1?)"
log "PostgreSQL login as test role OK"

# --- 3. lint -----------------------------------------------------------------

if [ "$lint" -eq 1 ]; then
  # rustfmt/clippy come as rustup components.
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if have rustup; then
      log "rustup component add rustfmt clippy"
      rustup component add rustfmt clippy
    else
      die "cargo fmt / cargo clippy missing and rustup not found; install rustfmt and clippy"
    fi
  fi
  log "cargo fmt --all -- --check"
  cargo fmt --all -- --check
  log "cargo clippy --workspace --all-targets --locked -- -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
else
  log "--no-lint: skipping cargo fmt and cargo clippy"
fi

# --- 4. tests ------------------------------------------------------------------

if cargo nextest --version >/dev/null 2>&1; then
  # --no-tests=warn: behave like cargo test when nothing matches.
  log "cargo nextest run --workspace --exclude tests-e2e --locked ${runner_args[*]}"
  cargo nextest run --workspace --exclude tests-e2e --locked --no-tests=warn "${runner_args[@]}"
  # nextest does not run doctests.
  log "cargo test --workspace --exclude tests-e2e --doc --locked"
  cargo test --workspace --exclude tests-e2e --doc --locked
else
  log "cargo test --workspace --exclude tests-e2e --locked ${runner_args[*]}"
  cargo test --workspace --exclude tests-e2e --locked "${runner_args[@]}"
fi

# --- 5. Kubernetes manifests ---------------------------------------------------
# The operator tests wrote target/render/*.yaml; validate those and the Helm
# chart against the Kubernetes OpenAPI schemas (strict), offline.
if [ "${#runner_args[@]}" -eq 0 ]; then
  ensure_python_venv
  log "Kubernetes manifests: helm lint and strict schema validation"
  bash "$PARLEY_ROOT/scripts/validate-k8s.sh"
else
  log "test filter given: skipping the Kubernetes manifest validation"
fi

# --- 6. end to end -------------------------------------------------------------
# The whole platform (monolithic) on private PostgreSQL/RabbitMQ, driven by
# tests-e2e through its public URL. `scripts/e2e.sh microservices` is the
# other mode (README).
if [ "${#runner_args[@]}" -eq 0 ]; then
  log "end-to-end suite (scripts/e2e.sh monolithic)"
  bash "$PARLEY_ROOT/scripts/e2e.sh" monolithic
else
  log "test filter given: skipping the end-to-end suite"
fi

log "all checks and tests passed"
