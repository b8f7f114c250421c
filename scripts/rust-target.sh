#!/usr/bin/env bash
# scripts/rust-target.sh: maps a platform to what building the static binary
# for it needs: the Rust target triple, the C compiler and archiver that link
# it and build the C in aws-lc-sys (Debian's triplet-prefixed names, which
# the native gcc and binutils also provide), and the Debian packages that
# bring them when the build machine is another architecture.
#
# The image is built for linux/amd64 and linux/arm64 (AKS runs x86-64 and
# Arm64 node pools). ARCH is what BuildKit passes as TARGETARCH or
# TARGETPLATFORM, or a kernel name: amd64, x86_64, linux/amd64, arm64,
# aarch64, linux/arm64, linux/arm64/v8. Without ARCH, this machine's.
# Prints shell assignments, one a line, for eval; an unknown architecture
# prints a sentence on stderr and exits 2.
#
#   scripts/rust-target.sh arm64
#   eval "$(scripts/rust-target.sh "$TARGETARCH")"
set -euo pipefail

arch=${1:-$(uname -m)}
case $arch in
  amd64 | x86_64 | linux/amd64 | linux/x86_64)
    rust_target=x86_64-unknown-linux-gnu
    gnu=x86_64-linux-gnu
    packages="gcc-x86-64-linux-gnu libc6-dev-amd64-cross"
    ;;
  arm64 | aarch64 | linux/arm64 | linux/arm64/v8 | linux/aarch64)
    rust_target=aarch64-unknown-linux-gnu
    gnu=aarch64-linux-gnu
    packages="gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
    ;;
  *)
    echo "error: no Rust target for the architecture '$arch': the image is built for linux/amd64 and linux/arm64 only." >&2
    exit 2
    ;;
esac

printf 'RUST_TARGET=%q\n' "$rust_target"
printf 'TARGET_CC=%q\n' "$gnu-gcc"
printf 'TARGET_AR=%q\n' "$gnu-ar"
printf 'CROSS_PACKAGES=%q\n' "$packages"
