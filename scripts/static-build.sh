#!/usr/bin/env bash
# scripts/static-build.sh: builds the static binary the image ships, with
# Cargo.toml's size profile `dist`, for this machine or, cross-compiling, for
# another architecture. The one definition of that build: the Dockerfile,
# `make static`, scripts/static-rootfs-test.sh and bench/run.sh all call it.
#
#   scripts/static-build.sh                                  # for this machine (make static)
#   scripts/static-build.sh --arch arm64 --out /ai-service   # the Dockerfile, with TARGETARCH
#   scripts/static-build.sh --profile release                # another Cargo profile, to compare
#   scripts/static-build.sh --install-cross arm64            # as root: what a cross build needs
#   scripts/static-build.sh --print --arch arm64             # what it would run, without running it
#
# ARCH is anything scripts/rust-target.sh maps (amd64, arm64, linux/arm64,
# aarch64, ...). The binary lands in ${CARGO_TARGET_DIR:-target}/<triple>/
# <profile>/ai-service (dist unless --profile), and is copied to --out FILE.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO=${CARGO:-cargo}

# crt-static links glibc statically, so the binary needs no loader or .so
# files at run time (glibc 2.36 has its "files" and "dns" name services
# built in, so name resolution still works). There is no musl target on our
# machines, hence a static glibc binary.
# getrandom_backend="linux_getrandom": in a static binary getrandom 0.3/0.4
# cannot find getrandom(2) through dlsym and fall back to reading
# /dev/urandom, so without a /dev every request id (uuid v4) panics. This
# cfg calls getrandom(2) directly (Linux 3.17+), so the binary needs no /dev.
STATIC_RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"'

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

arch="" out="" print=false install_cross=false
# The profile the image ships: see [profile.dist] in Cargo.toml for its
# settings and what they cost and save.
profile=dist
while [[ $# -gt 0 ]]; do
  case $1 in
    # An empty ARCH (a build without BuildKit's TARGETARCH) is this machine's.
    --arch) [[ $# -ge 2 ]] || usage && arch=$2 && shift ;;
    --out) out=${2:?--out needs a file} && shift ;;
    --profile) profile=${2:?--profile needs a Cargo profile name} && shift ;;
    --print) print=true ;;
    --install-cross) [[ $# -ge 2 ]] || usage && install_cross=true && arch=$2 && shift ;;
    -h | --help) usage ;;
    *)
      echo "error: unknown argument '$1'" >&2
      usage
      ;;
  esac
  shift
done

RUST_TARGET="" TARGET_CC="" TARGET_AR="" CROSS_PACKAGES=""
mapping=$(bash "$ROOT/scripts/rust-target.sh" ${arch:+"$arch"}) || exit 2
eval "$mapping"

command -v rustc >/dev/null 2>&1 || {
  echo "error: rustc is not on PATH: install Rust with rustup (https://rustup.rs)." >&2
  exit 1
}
host=$(rustc -vV | sed -n 's/^host: //p')

if $install_cross; then
  if [[ $RUST_TARGET == "$host" ]]; then
    echo "# $RUST_TARGET is this machine's own target: nothing to install"
    exit 0
  fi
  # Debian's cross gcc and static glibc for the target, and Rust's standard
  # library for it. Run as root (the Dockerfile's builder stage).
  apt-get update
  # shellcheck disable=SC2086 # CROSS_PACKAGES is a list of package names
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $CROSS_PACKAGES
  rm -rf /var/lib/apt/lists/*
  rustup target add "$RUST_TARGET"
  exit 0
fi

# The environment of the build. A cross build names the target's linker for
# cargo and its C compiler and archiver for the cc crate (aws-lc-sys builds
# C); a native build keeps the machine's own (cc), whatever its name.
# AWS_LC_SYS_NO_JITTER_ENTROPY=1: aws-lc (rustls' crypto, through aws-lc-sys)
# seeds its random generator from the kernel (getrandom) only, instead of
# also timing CPU jitter, which costs 30-40 ms of CPU at the first TLS
# handshake: `ai-service check` (one call to a local HTTPS endpoint) uses a
# median 3 ms of CPU without it and 35-45 ms with it, 8 periods of the pod's
# 50 millicore quota. Not a link matter: the dist build links and passes
# scripts/static-rootfs-test.sh either way. aws-lc-sys reads it at build time
# (changing it rebuilds aws-lc-sys and what depends on it).
ENV=("RUSTFLAGS=$STATIC_RUSTFLAGS" AWS_LC_SYS_NO_JITTER_ENTROPY=1)
if [[ $RUST_TARGET != "$host" ]]; then
  upper=${RUST_TARGET^^}
  ENV+=("CARGO_TARGET_${upper//-/_}_LINKER=$TARGET_CC"
    "CC_${RUST_TARGET//-/_}=$TARGET_CC"
    "AR_${RUST_TARGET//-/_}=$TARGET_AR")
fi
BUILD=("$CARGO" build --profile "$profile" --locked --target "$RUST_TARGET")

if $print; then
  printf '%q\n' "${ENV[@]}"
  printf '%q' "${BUILD[0]}"
  printf ' %q' "${BUILD[@]:1}"
  printf '\n'
  exit 0
fi

if [[ $RUST_TARGET != "$host" ]]; then
  command -v "$TARGET_CC" >/dev/null 2>&1 || {
    echo "error: no C compiler $TARGET_CC for $RUST_TARGET: run 'scripts/static-build.sh --install-cross ${arch:-$RUST_TARGET}' as root (Debian: $CROSS_PACKAGES)." >&2
    exit 1
  }
fi

cd "$ROOT"
echo "# building: ${ENV[*]} ${BUILD[*]}"
# CARGO_ENCODED_RUSTFLAGS would take precedence over RUSTFLAGS.
env -u CARGO_ENCODED_RUSTFLAGS "${ENV[@]}" "${BUILD[@]}"

target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$ROOT/$target_dir
# Cargo's output directory is the profile's name, but for `dev`'s (debug).
profile_dir=$profile
[[ $profile != dev ]] || profile_dir=debug
bin=$target_dir/$RUST_TARGET/$profile_dir/ai-service
if [[ -n $out ]]; then
  cp "$bin" "$out"
  bin=$out
fi
echo "# static binary: $bin"
