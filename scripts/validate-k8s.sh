#!/usr/bin/env bash
# Offline checks of Parley's Kubernetes packaging; no cluster, no Docker, no
# network after the first run.
#
#   (a) tools: a venv in target/k8s-tools/venv with the exact versions of
#       scripts/k8s-tools-requirements.txt (kubernetes-validate, helm-python-sdk);
#       reinstalled only when that file or the Python version changes
#   (b) chart: helm lint --strict and helm template of charts/parley-operator,
#       watching all namespaces or one, NetworkPolicy on and off, with checks
#       that each variant renders the kinds it should
#   (c) chart objects: every rendered object validated, strict, against the
#       Kubernetes OpenAPI schema of K8S_VERSION; the chart's CRD too, and the
#       CRD copy compared with crds/chatcluster.yaml, once they exist
#   (d) operator output: target/render/*.yaml (`parley-operator render` of each
#       example, written by a Rust test), validated the same way; kinds with no
#       bundled schema (cert-manager Certificate, Gateway API HTTPRoute, ...)
#       are listed as skipped
#   (f) examples: examples/*.yaml, core kinds strictly; ChatClusters against the
#       CRD's schema once the CRD exists (CEL rules are not evaluated here)
#   (e) a summary; exits non-zero when any check failed
#
# Helm: helm-python-sdk bundles no `helm` executable. It binds Helm v4's Go SDK
# (libhelm_c.so inside the wheel) through ctypes; scripts/validate_k8s.py calls
# its lint (strict) and render, which are what `helm lint --strict` and
# `helm template` run.
#
# Environment: K8S_VERSION (default 1.33.0; kubernetes-validate 1.37.0 bundles
# 1.25 .. 1.37), PYTHON (default python3, >= 3.10).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

K8S_VERSION="${K8S_VERSION:-1.33.0}"
PYTHON="${PYTHON:-python3}"
TOOLS="$ROOT/target/k8s-tools"
VENV="$TOOLS/venv"
PY="$VENV/bin/python"
OUT="$TOOLS/render"
REQUIREMENTS="scripts/k8s-tools-requirements.txt"
HELPER="scripts/validate_k8s.py"
CHART="charts/parley-operator"
CHART_CRD="$CHART/crds/chatcluster.yaml"
ROOT_CRD="crds/chatcluster.yaml"
RELEASE_NAMESPACE="parley-system"

declare -a SUMMARY=()
PASSED=0
FAILED=0
SKIPPED=0

# record STATUS NAME [DETAIL]
record() {
  local status="$1" name="$2" detail="${3:-}"
  case "$status" in
    PASS) PASSED=$((PASSED + 1)) ;;
    FAIL) FAILED=$((FAILED + 1)) ;;
    SKIP) SKIPPED=$((SKIPPED + 1)) ;;
  esac
  SUMMARY+=("$(printf '%-4s  %s%s' "$status" "$name" "${detail:+ ($detail)}")")
}

# check NAME CMD...: run CMD under a heading; record PASS or FAIL.
check() {
  local name="$1"
  shift
  echo "--- $name"
  if "$@"; then
    record PASS "$name"
  else
    echo "  => FAILED: $name"
    record FAIL "$name"
  fi
}

helper() {
  "$PY" "$HELPER" --kube-version "$K8S_VERSION" "$@"
}

# ------------------------------------------------------------------ (a) tools

install_tools() {
  mkdir -p "$TOOLS"
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "  $PYTHON is missing or older than 3.10 (helm-python-sdk needs >= 3.10)"
    return 1
  fi
  local stamp="$TOOLS/.installed" want
  want="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) $("$PYTHON" -c 'import platform; print(platform.python_version())')"
  if [[ -x "$PY" && "$(cat "$stamp" 2>/dev/null || true)" == "$want" ]] \
    && "$PY" -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
    echo "  up to date: $VENV"
  else
    echo "  installing $REQUIREMENTS into $VENV"
    rm -rf "$VENV" "$stamp"
    if ! "$PYTHON" -m venv "$VENV"; then
      echo "  '$PYTHON -m venv' failed; on Debian: apt-get install python3-venv"
      return 1
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
      --requirement "$REQUIREMENTS"
    "$PY" -c 'import helm_python, kubernetes_validate'
    printf '%s\n' "$want" >"$stamp"
  fi
  "$PY" - <<'EOF'
from pathlib import Path
import helm_python, kubernetes_validate.version as kv
lib = helm_python.library_path
lib = Path(lib() if callable(lib) else lib)
print(f"  helm SDK {helm_python.helm_sdk_version()} (helm-python-sdk {helm_python.__version__}, "
      f"{lib.name})")
print(f"  kubernetes-validate {kv.__version__}")
EOF
}

# --------------------------------------------------------------- (b) (c) chart

# expect_kinds FILE [+Kind | -Kind]...: FILE has (+) or lacks (-) each kind.
expect_kinds() {
  local file="$1" spec kind ok=0
  shift
  for spec in "$@"; do
    kind="${spec:1}"
    if grep -qx "kind: $kind" "$file"; then
      [[ "${spec:0:1}" == "+" ]] || { echo "  unexpected kind $kind in $file"; ok=1; }
    else
      [[ "${spec:0:1}" == "-" ]] || { echo "  missing kind $kind in $file"; ok=1; }
    fi
  done
  [[ $ok -eq 0 ]] && echo "  kinds as expected: $*"
  return "$ok"
}

# chart_case NAME "EXPECTED KINDS" [--set K=V]...
chart_case() {
  local name="$1" kinds="$2" file="$OUT/chart-$1.yaml"
  shift 2
  local -a expected
  read -r -a expected <<<"$kinds"
  check "chart lint --strict [$name]" \
    helper lint "$CHART" --namespace "$RELEASE_NAMESPACE" "$@"
  rm -f "$file"
  check "chart template [$name]" \
    helper template "$CHART" --release parley-operator --namespace "$RELEASE_NAMESPACE" --out "$file" "$@"
  if [[ -s "$file" ]]; then
    check "chart renders the right kinds [$name]" expect_kinds "$file" "${expected[@]}"
    check "chart objects valid, strict, Kubernetes $K8S_VERSION [$name]" helper validate "$file"
  else
    record FAIL "chart objects [$name]" "nothing rendered"
  fi
}

chart_checks() {
  mkdir -p "$OUT"
  chart_case all-namespaces \
    "+ServiceAccount +ClusterRole +ClusterRoleBinding -Role -RoleBinding +Deployment +Service +NetworkPolicy"
  chart_case one-namespace \
    "+ServiceAccount -ClusterRole -ClusterRoleBinding +Role +RoleBinding +Deployment +Service +NetworkPolicy" \
    --set watchNamespace=parley
  chart_case no-networkpolicy \
    "+ClusterRole +Deployment -NetworkPolicy" \
    --set networkPolicy.enabled=false
  chart_case one-namespace-ha-no-networkpolicy \
    "-ClusterRole +Role +RoleBinding +Deployment -NetworkPolicy" \
    --set watchNamespace=parley --set networkPolicy.enabled=false --set replicaCount=2
  # Exactly what .github/workflows/e2e-kind.yml installs.
  chart_case e2e-kind \
    "+ClusterRole +Deployment +NetworkPolicy" \
    --set image.tag=ci --set image.pullPolicy=Never

  if [[ -f "$CHART_CRD" ]]; then
    check "chart CRD valid, strict, Kubernetes $K8S_VERSION" helper validate "$CHART_CRD"
    if [[ -f "$ROOT_CRD" ]]; then
      check "chart CRD identical to $ROOT_CRD" cmp "$CHART_CRD" "$ROOT_CRD"
    else
      record FAIL "chart CRD identical to $ROOT_CRD" "$ROOT_CRD missing"
    fi
  else
    record SKIP "chart CRD" "$CHART_CRD not generated yet"
  fi
}

# ---------------------------------------------------------- (d) operator output

render_checks() {
  local -a files
  shopt -s nullglob
  files=(target/render/*.yaml)
  shopt -u nullglob
  if [[ ${#files[@]} -eq 0 ]]; then
    record SKIP "operator render output" "no target/render/*.yaml"
    return
  fi
  local file
  for file in "${files[@]}"; do
    check "operator render valid, strict, Kubernetes $K8S_VERSION [$(basename "$file")]" \
      helper validate "$file"
  done
}

# ------------------------------------------------------------------ (f) examples

example_checks() {
  local -a files
  shopt -s nullglob
  files=(examples/*.yaml)
  shopt -u nullglob
  if [[ ${#files[@]} -eq 0 ]]; then
    record SKIP "examples" "no examples/*.yaml"
    return
  fi
  local file
  for file in "${files[@]}"; do
    if [[ -f "$CHART_CRD" ]]; then
      check "example valid against the CRD and Kubernetes $K8S_VERSION [$(basename "$file")]" \
        helper crd --crd "$CHART_CRD" "$file"
    else
      check "example core kinds valid, Kubernetes $K8S_VERSION [$(basename "$file")]" \
        helper validate "$file"
    fi
  done
  [[ -f "$CHART_CRD" ]] || record SKIP "examples against the CRD schema" "$CHART_CRD not generated yet"
}

# ------------------------------------------------------------------------ main

echo "=== validate-k8s: Kubernetes $K8S_VERSION, outputs in ${OUT#"$ROOT"/} ==="
echo "--- tools (${REQUIREMENTS})"
if install_tools; then
  record PASS "tools installed"
  chart_checks
  render_checks
  example_checks
else
  record FAIL "tools installed" "see above"
fi

echo
echo "=== validate-k8s summary ==="
printf '%s\n' "${SUMMARY[@]}"
echo "validate-k8s: $PASSED passed, $FAILED failed, $SKIPPED skipped"
if [[ $FAILED -gt 0 ]]; then
  echo "validate-k8s: FAILED: $FAILED check(s) failed (details above each FAILED line)" >&2
  exit 1
fi
