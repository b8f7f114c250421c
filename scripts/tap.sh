# shellcheck shell=bash
# scripts/tap.sh: the "ok - ..." / "not ok - ..." lines and the closing
# "N passed, M failed" of the project's shell test scripts (k8s/test.sh,
# scripts/build-test.sh, scripts/static-rootfs-test.sh), sourced by each.

PASSED=0
FAILED=0

# pass NAME
pass() {
  PASSED=$((PASSED + 1))
  printf 'ok - %s\n' "$1"
}

# fail NAME [DETAILS]: the details are indented under the line.
fail() {
  FAILED=$((FAILED + 1))
  printf 'not ok - %s\n' "$1"
  if [[ -n ${2:-} ]]; then printf '%s\n' "$2" | sed 's/^/    /'; fi
}
