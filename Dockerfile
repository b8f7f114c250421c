# syntax=docker/dockerfile:1
# The ai-service image: one static binary and a CA bundle, FROM scratch, for
# linux/amd64 and linux/arm64 (AKS runs x86-64 and Arm64 node pools).
#   docker build -t ai-service .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ai-service .
#   docker run --rm -p 5001:5001 ai-service     # starts in offline mode
# scripts/static-rootfs-test.sh checks the same binary in the same layout
# without Docker.

# --- Build: a statically linked glibc binary --------------------------------
# The builder runs on the build machine's own platform and cross-compiles
# for the target's (no emulation): scripts/static-build.sh maps TARGETARCH
# to the Rust target, its linker and C compiler, and holds the static
# RUSTFLAGS and the reasons for them. It builds Cargo.toml's size profile
# `dist` (opt-level "s", fat LTO, one codegen unit), which keeps the image
# near 7 MB; the figures are in Cargo.toml.
FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS builder
ARG TARGETARCH
WORKDIR /src
COPY scripts/rust-target.sh scripts/static-build.sh scripts/
# For another architecture than the build machine's: Debian's cross gcc and
# static glibc, and Rust's standard library for the target. Nothing for the
# build machine's own.
RUN bash scripts/static-build.sh --install-cross "$TARGETARCH"
COPY . .
# BuildKit cache mounts keep the downloaded crates and the compiled
# dependencies between builds, so a code change recompiles only this crate
# (and runs the link-time optimization again: about a minute).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    bash scripts/static-build.sh --arch "$TARGETARCH" --out /ai-service

# --- Runtime: nothing but the binary and the CA bundle ----------------------
FROM scratch
LABEL org.opencontainers.image.title="ai-service" \
      org.opencontainers.image.description="Product descriptions and images from Azure OpenAI for the aks-store-demo, with passwordless Entra auth" \
      org.opencontainers.image.licenses="MIT"
# rustls verifies Azure's certificates against this bundle.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /ai-service /ai-service
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PORT=5001
# 65532 is the "nonroot" user of distroless images; k8s/deployment.yaml runs
# the pod as the same user and group.
USER 65532:65532
EXPOSE 5001
# There is no shell or curl in the image: the binary checks its own /health.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/ai-service", "healthcheck"]
ENTRYPOINT ["/ai-service"]
