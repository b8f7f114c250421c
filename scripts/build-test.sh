#!/usr/bin/env bash
# scripts/build-test.sh: offline tests of the build and release files that
# no Docker engine or GitHub runner is needed for: the platform mapping of
# scripts/rust-target.sh, the profile and cross-build environment of
# scripts/static-build.sh, the static RUSTFLAGS being defined once, the
# Docker build context holding what the Dockerfile copies, and every action
# in .github/workflows/ being pinned to a full commit SHA.
# Prints "ok - ..." or "not ok - ..." per check, then "N passed, M failed";
# exits non-zero on any failure. k8s/test.sh runs it.
#
#   scripts/build-test.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# shellcheck source=scripts/tap.sh
source "$ROOT/scripts/tap.sh"
# expect NAME ACTUAL EXPECTED
expect() {
  if [[ $2 == "$3" ]]; then pass "$1"; else fail "$1" "expected: $3"$'\n'"got:      $2"; fi
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- The platform mapping -----------------------------------------------------

# Prints the mapping of $1 as one line: RUST_TARGET TARGET_CC TARGET_AR CROSS_PACKAGES.
mapping() {
  local out RUST_TARGET="" TARGET_CC="" TARGET_AR="" CROSS_PACKAGES=""
  out=$(bash scripts/rust-target.sh "$@") || return 1
  eval "$out"
  printf '%s %s %s %s\n' "$RUST_TARGET" "$TARGET_CC" "$TARGET_AR" "$CROSS_PACKAGES"
}

test_mapping() {
  local arch
  for arch in amd64 x86_64 linux/amd64; do
    expect "rust-target.sh maps $arch to x86-64" "$(mapping "$arch" 2>&1)" \
      "x86_64-unknown-linux-gnu x86_64-linux-gnu-gcc x86_64-linux-gnu-ar gcc-x86-64-linux-gnu libc6-dev-amd64-cross"
  done
  for arch in arm64 aarch64 linux/arm64 linux/arm64/v8; do
    expect "rust-target.sh maps $arch to Arm64" "$(mapping "$arch" 2>&1)" \
      "aarch64-unknown-linux-gnu aarch64-linux-gnu-gcc aarch64-linux-gnu-ar gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
  done
  local out rc
  for arch in riscv64 linux/arm/v7 linux/s390x windows/amd64; do
    rc=0
    out=$(bash scripts/rust-target.sh "$arch" 2>&1 >/dev/null) || rc=$?
    if [[ $rc != 0 && $out == "error: no Rust target for the architecture '$arch': "* ]]; then
      pass "rust-target.sh refuses the architecture '$arch' with a sentence"
    else
      fail "rust-target.sh refuses the architecture '$arch' with a sentence" "exit $rc: $out"
    fi
  done
  # Without an argument, this machine's: the triple rustc builds for by
  # default, which static-build.sh takes for a native (not cross) build.
  local host
  host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
  out=$(mapping 2>&1 || true)
  expect "rust-target.sh without an argument maps this machine ($(uname -m)) to rustc's host triple" "${out%% *}" "${host:-rustc is not on PATH}"
  # An empty one too: a build without BuildKit has no TARGETARCH.
  out=$(mapping "" 2>&1 || true)
  expect "rust-target.sh with an empty architecture maps this machine too" "${out%% *}" "${host:-rustc is not on PATH}"
}

# --- The cross-build environment ----------------------------------------------

test_static_build() {
  local host other out
  host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
  case $host in
    x86_64-unknown-linux-gnu) other=arm64 ;;
    aarch64-unknown-linux-gnu) other=amd64 ;;
    *) other="" ;;
  esac
  if [[ -z $other ]]; then
    fail "static-build.sh knows this machine's Rust host triple" "rustc's host is '$host'"
    return 0
  fi
  local flags="RUSTFLAGS=-C\\ target-feature=+crt-static\\ --cfg\\ getrandom_backend=\\\"linux_getrandom\\\""
  flags+=$'\n'"AWS_LC_SYS_NO_JITTER_ENTROPY=1"
  out=$(bash scripts/static-build.sh --print 2>&1 || true)
  expect "static-build.sh builds natively for this machine: profile dist, static RUSTFLAGS, no jitter entropy, the machine's own linker and C compiler" \
    "$out" "$flags"$'\n'"cargo build --profile dist --locked --target $host"
  out=$(bash scripts/static-build.sh --print --arch "linux/$other" 2>&1 || true)
  local t cc ar
  read -r t cc ar _ <<<"$(mapping "$other")"
  local t_upper=${t^^} t_lower=${t//-/_}
  expect "static-build.sh cross-builds for linux/$other: cargo's linker and the cc crate's CC and AR for $t" \
    "$out" "$flags"$'\n'"CARGO_TARGET_${t_upper//-/_}_LINKER=$cc"$'\n'"CC_$t_lower=$cc"$'\n'"AR_$t_lower=$ar"$'\n'"cargo build --profile dist --locked --target $t"
  out=$(bash scripts/static-build.sh --print --profile release 2>&1 || true)
  expect "static-build.sh --profile release builds that profile with the same environment" \
    "$out" "$flags"$'\n'"cargo build --profile release --locked --target $host"
  # The profile the image ships is defined, and is a size profile.
  if awk '/^\[/ {in_dist = ($0 == "[profile.dist]")} in_dist && /^(opt-level|lto|codegen-units) *=/ {n++} END {exit n != 3}' Cargo.toml; then
    pass "Cargo.toml defines [profile.dist] with opt-level, lto and codegen-units"
  else
    fail "Cargo.toml defines [profile.dist] with opt-level, lto and codegen-units" "$(sed -n '/^\[profile.dist\]/,/^\[/p' Cargo.toml)"
  fi
  if out=$(bash scripts/static-build.sh --print --arch riscv64 2>&1); then
    fail "static-build.sh refuses an unknown architecture" "it printed: $out"
  else
    pass "static-build.sh refuses an unknown architecture"
  fi

  # The flags are spelt in one place: Makefile, Dockerfile, the static test
  # and the bench call static-build.sh instead of repeating them.
  local spelt
  spelt=$(grep -l -e 'crt-static' -e 'getrandom_backend' -e 'AWS_LC_SYS_NO_JITTER_ENTROPY' \
    Makefile Dockerfile scripts/*.sh bench/*.sh .github/workflows/* 2>/dev/null |
    grep -v -x scripts/build-test.sh || true)
  expect "the static RUSTFLAGS and the aws-lc build setting are defined only in scripts/static-build.sh" "$spelt" "scripts/static-build.sh"
  for f in Makefile Dockerfile scripts/static-rootfs-test.sh bench/run.sh; do
    if grep -q 'scripts/static-build\.sh' "$f"; then
      pass "$f builds through scripts/static-build.sh"
    else
      fail "$f builds through scripts/static-build.sh"
    fi
  done
  # The image and its test build the script's default profile (dist): a
  # --profile on either would ship, or test, another binary.
  local overridden
  overridden=$(grep -n 'static-build\.sh.*--profile' Dockerfile scripts/static-rootfs-test.sh || true)
  expect "the Dockerfile and scripts/static-rootfs-test.sh build static-build.sh's default profile" "$overridden" ""
}

# --- The Docker build context -------------------------------------------------

# .dockerignore leaves scripts/ out of the context: each script the
# Dockerfile copies must be let back in, or the build stops at the COPY.
test_docker_context() {
  local copied f missing=()
  copied=$(sed -n 's/^COPY \(scripts\/[^ ]*\( scripts\/[^ ]*\)*\) .*/\1/p' Dockerfile)
  if [[ -z $copied ]]; then
    fail "the Dockerfile copies its build scripts before the sources" "no 'COPY scripts/... ' line"
    return 0
  fi
  for f in $copied; do
    grep -qx "!$f" .dockerignore || missing+=("$f")
  done
  if [[ ${#missing[@]} == 0 ]]; then
    pass "the Docker build context holds the scripts the Dockerfile copies ($(tr '\n' ' ' <<<"$copied" | sed 's/ $//'))"
  else
    fail "the Docker build context holds the scripts the Dockerfile copies" ".dockerignore lacks: ${missing[*]/#/!}"
  fi
}

# --- Workflow pins --------------------------------------------------------------

# check_pins FILE...: prints each `uses:` that is not pinned to a full commit
# SHA with its version in a comment (`uses: owner/repo@<40 hex> # vX.Y.Z`);
# local actions (./...) need none. Fails if any is, or if there is no
# `uses:` at all.
check_pins() {
  awk '
    /^[[:space:]]*(-[[:space:]]+)?uses:/ {
      line = $0
      sub(/^[[:space:]]*(-[[:space:]]+)?uses:[[:space:]]*/, "", line)
      ref = line; sub(/[[:space:]].*/, "", ref); gsub(/["\047]/, "", ref)
      rest = line; sub(/^[^[:space:]]*/, "", rest)
      n++
      if (ref ~ /^\.\//) next
      # (No {40}: mawk, Debian'"'"'s awk, has no interval expressions.)
      sha = ref; sub(/^[^@]*@/, "", sha)
      if (ref !~ /^[A-Za-z0-9_.-]+\/[A-Za-z0-9_.\/-]+@[0-9a-f]+$/ || length(sha) != 40) {
        print FILENAME ":" FNR ": " ref " is not pinned to a 40-hex commit SHA"; bad++
      } else if (rest !~ /^[[:space:]]+#[[:space:]]*v[0-9]+\.[0-9]+\.[0-9]+([[:space:]]|$)/) {
        print FILENAME ":" FNR ": " ref " has no # vX.Y.Z comment"; bad++
      }
    }
    END {
      if (n == 0) { print "no uses: found"; exit 1 }
      exit bad > 0
    }' "$@"
}

test_pins() {
  local files=() f out
  for f in .github/workflows/*.yml .github/workflows/*.yaml; do
    if [[ -f $f ]]; then files+=("$f"); fi
  done
  if [[ ${#files[@]} == 0 ]]; then
    fail "every action in .github/workflows/ is pinned to a commit SHA" "no workflow in .github/workflows/"
    return 0
  fi
  if out=$(check_pins "${files[@]}" 2>&1); then
    pass "every action in .github/workflows/ is pinned to a commit SHA with a # vX.Y.Z comment ($(grep -hcE '^[[:space:]]*(-[[:space:]]+)?uses:' "${files[@]}" | awk '{n += $1} END {print n}') uses)"
  else
    fail "every action in .github/workflows/ is pinned to a commit SHA with a # vX.Y.Z comment" "$out"
  fi
  # The check itself must reject a tag, a branch, a short SHA, and a SHA
  # without its full version in a comment.
  local bad
  for bad in "actions/checkout@v4" "actions/checkout@main" "actions/checkout@11bd719 # v4.2.2" \
    "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683" \
    "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4"; do
    printf 'jobs:\n  a:\n    steps:\n      - uses: %s\n' "$bad" >"$WORK/bad.yml"
    if out=$(check_pins "$WORK/bad.yml" 2>&1); then
      fail "the pin check rejects 'uses: $bad'" "it accepted it"
    else
      pass "the pin check rejects 'uses: $bad'"
    fi
  done
}

test_mapping
test_static_build
test_docker_context
test_pins
printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
[[ $FAILED == 0 ]]
