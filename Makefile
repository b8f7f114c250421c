# ai-service: every command a developer or CI needs. `make` lists them.
# CI runs `make test` (through .ci/run) and nothing else.

.DEFAULT_GOAL := help
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help run test fmt-check clippy deps-check test-rust openapi openapi-check k8s-test static-test static bench fuzz image toolchain

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo is missing: install Rust with rustup (https://rustup.rs)"; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

run: toolchain ## Start the service on :5001 (PORT); with nothing configured it serves the offline default
	$(CARGO) run --locked --bin ai-service

test: fmt-check clippy deps-check test-rust k8s-test static-test ## The whole suite: fmt, clippy -D warnings, tests (incl. the openapi drift check), k8s and image checks

fmt-check: toolchain ## Formatting check
	$(CARGO) fmt --all -- --check

clippy: toolchain ## Lints, warnings as errors
	$(CARGO) clippy --locked --all-targets -- -D warnings

deps-check: toolchain ## One version of each HTTP/TLS crate (a second reqwest beside azure_core's 0.13 is a bug)
	@dups=$$($(CARGO) tree --locked -d -e normal --prefix none | grep -E '^(reqwest|hyper|rustls|http|azure_core) v' \
	  | awk '{print $$1, $$2}' | sort -u | awk '{n[$$1]++} END {for (c in n) if (n[c] > 1) print c}'); \
	if [ -n "$$dups" ]; then echo "more than one version of: $$dups"; exit 1; fi; \
	echo "deps-check: one version each of reqwest, hyper, rustls, http, azure_core"

test-rust: toolchain ## Unit and integration tests (mocks over HTTPS with a test CA made at test time)
	$(CARGO) test --locked --all-targets

openapi-check: toolchain ## Fails when openapi.yaml differs from what the code generates
	$(CARGO) test --locked --test api openapi::

openapi: toolchain ## Rewrite openapi.yaml from the code
	$(CARGO) run --locked --quiet --bin ai-service -- openapi > openapi.yaml

k8s-test: ## Validate manifests, test setup.sh against fake az/kubectl and the build/release files; shellcheck, hadolint, actionlint
	bash k8s/test.sh

static-test: toolchain ## Build the Dockerfile's static binary (profile dist) and run it in an empty root filesystem
	bash scripts/static-rootfs-test.sh

# scripts/static-build.sh is the one definition of that build (profile, flags and why), shared with the Dockerfile.
static: toolchain ## Build the static binary the image ships (profile dist), for this machine (TARGETARCH=arm64 cross-compiles; PROFILE=release compares)
	CARGO='$(CARGO)' bash scripts/static-build.sh $(if $(TARGETARCH),--arch '$(TARGETARCH)') $(if $(PROFILE),--profile '$(PROFILE)')

bench: toolchain ## Benchmark against a mock Azure OpenAI + Entra over HTTPS (results in bench/results/)
	bash bench/run.sh

fuzz: toolchain ## Long fuzz run of request decoding and upstream parsing
	FUZZ_CASES=100000 $(CARGO) test --locked --release --test api fuzz:: -- --nocapture

image: ## Build the container image (needs a Docker engine)
	docker build -t ai-service:local .
