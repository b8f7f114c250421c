# syntax=docker/dockerfile:1
# The ai-service image: one static binary and a CA bundle, FROM scratch.
#   docker build -t ai-service .
#   docker run --rm -p 5001:5001 ai-service     # starts in offline mode
# scripts/static-rootfs-test.sh checks the same binary in the same layout
# without Docker.

# --- Build: a statically linked glibc binary --------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# crt-static links glibc statically, so the binary needs no loader or .so
# files at run time (glibc 2.36 has its "files" and "dns" name services
# built in, so name resolution still works).
# getrandom_backend="linux_getrandom": in a static binary getrandom 0.3/0.4
# cannot find getrandom(2) through dlsym and fall back to reading
# /dev/urandom, so without a /dev every request id (uuid v4) panics. This
# cfg calls getrandom(2) directly (Linux 3.17+), so the binary needs no /dev.
# BuildKit cache mounts keep the downloaded crates and the compiled
# dependencies between builds, so a code change recompiles only this crate.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS="-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && cp target/x86_64-unknown-linux-gnu/release/ai-service /ai-service

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
