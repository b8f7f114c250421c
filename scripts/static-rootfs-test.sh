#!/usr/bin/env bash
# scripts/static-rootfs-test.sh: builds the binary the Dockerfile builds
# (scripts/static-build.sh, for this machine) and runs it the way the FROM scratch image runs it, without Docker: in an
# otherwise empty root (chroot) holding only /ai-service and the CA bundle,
# as user 65532:65532, with no environment but PORT and SSL_CERT_FILE.
#
# Checks that the binary is static, serves /health, that its `healthcheck`
# subcommand (the image's HEALTHCHECK) works, that it stops cleanly on
# SIGTERM, and that from the bare root it can resolve a name and call an
# Azure OpenAI endpoint over TLS, trusting only the bundle (a local fake
# endpoint with a test CA). Prints the binary and estimated image sizes and
# "N passed, M failed". Needs root (chroot), curl, and for the TLS part
# python3 and openssl.
#
#   scripts/static-rootfs-test.sh
#   AI_SERVICE_BIN=path/to/ai-service scripts/static-rootfs-test.sh   # skip the build
#   CARGO_TARGET_DIR=/tmp/t scripts/static-rootfs-test.sh             # build elsewhere
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
UID_GID=65532:65532
# The fake Azure OpenAI host; /etc/hosts in the root maps it to 127.0.0.1,
# as the kubelet's /etc/hosts would map a name in a pod.
AOAI_HOST=aoai-static-test.openai.azure.com

PASSED=0
FAILED=0
SKIPPED=0
pass() {
  PASSED=$((PASSED + 1))
  printf 'ok - %s\n' "$1"
}
fail() {
  FAILED=$((FAILED + 1))
  printf 'not ok - %s\n' "$1"
  if [[ -n ${2:-} ]]; then printf '%s\n' "$2" | sed 's/^/    /'; fi
}
skip() {
  SKIPPED=$((SKIPPED + 1))
  printf 'skip - %s\n' "$1"
}
summary() {
  local line="$PASSED passed, $FAILED failed"
  [[ $SKIPPED == 0 ]] || line+=", $SKIPPED skipped"
  printf '%s\n' "$line"
  [[ $FAILED == 0 ]]
}

PIDS=()
WORK=""
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -KILL "$pid" 2>/dev/null; then
      { wait "$pid"; } 2>/dev/null || true
    fi
  done
  if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Prints a TCP port nobody listens on (the kernel picks it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 30000))
}

# Sets CMD to the command that runs /ai-service ARGS in the root as 65532
# with only the given variables: root_cmd VAR=VALUE... -- ARGS...
# (env and chroot exec, so a background "${CMD[@]}" & has the service's pid.)
root_cmd() {
  CMD=(env -i)
  while [[ $1 != -- ]]; do
    CMD+=("$1")
    shift
  done
  shift
  CMD+=("$CHROOT" --userspec="$UID_GID" "$RFS" /ai-service "$@")
}

# Waits up to 10 s for GET /health on $1 to answer 200; $2 is the pid.
wait_healthy() {
  local _
  for _ in $(seq 1 50); do
    if [[ $(curl -s -o "$WORK/health.json" -w '%{http_code}' "http://127.0.0.1:$1/health" 2>/dev/null) == 200 ]]; then
      return 0
    fi
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# Sends SIGTERM to $1 and sets STOPPED to its exit code, or to "timeout"
# after 10 s. (Not in a subshell: only this shell can wait for its child.)
stop() {
  local _
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 50); do
    if ! kill -0 "$1" 2>/dev/null; then
      STOPPED=0
      wait "$1" || STOPPED=$?
      return 0
    fi
    sleep 0.2
  done
  STOPPED=timeout
}

build() {
  if [[ -n ${AI_SERVICE_BIN:-} ]]; then
    BIN=$AI_SERVICE_BIN
    echo "# testing $BIN (AI_SERVICE_BIN; not building)"
    return 0
  fi
  BIN=$WORK/ai-service.built
  echo "# building: $(bash "$ROOT/scripts/static-build.sh" --print | tr '\n' ' ')"
  local out
  if out=$(bash "$ROOT/scripts/static-build.sh" --out "$BIN" 2>&1); then
    pass "the static release build succeeds (scripts/static-build.sh)"
  else
    fail "the static release build succeeds (scripts/static-build.sh)" "$(tail -n 40 <<<"$out")"
    summary
    exit 1
  fi
}

check_static() {
  local file_out ldd_out
  file_out=$(file -b "$BIN")
  ldd_out=$(ldd "$BIN" 2>&1 || true)
  if [[ $file_out == *static* && ($ldd_out == *"not a dynamic executable"* || $ldd_out == *"statically linked"*) ]]; then
    pass "the binary is statically linked ($(cut -d, -f1-2 <<<"$file_out" | sed 's/^ *//'))"
  else
    fail "the binary is statically linked" "file: $file_out"$'\n'"ldd: $ldd_out"
  fi
}

make_root() {
  RFS=$WORK/rootfs
  mkdir -p "$RFS/etc/ssl/certs"
  cp "$BIN" "$RFS/ai-service"
  cp "$CA_BUNDLE" "$RFS/etc/ssl/certs/ca-certificates.crt"
  # Root-owned and not writable by 65532, like the image with
  # readOnlyRootFilesystem: the service must not need to write anywhere.
  chmod 755 "$RFS" "$RFS/etc" "$RFS/etc/ssl" "$RFS/etc/ssl/certs"
  chmod 644 "$RFS/etc/ssl/certs/ca-certificates.crt"
  chmod 755 "$RFS/ai-service"
}

# The image's default: nothing configured, so the service starts offline.
test_server() {
  local port pid ids
  port=$(free_port)
  root_cmd PORT="$port" SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --
  "${CMD[@]}" >"$WORK/server.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  if wait_healthy "$port" "$pid"; then
    pass "GET /health answers 200 in the bare root within 10 s"
  else
    fail "GET /health answers 200 in the bare root within 10 s" "$(tail -n 30 "$WORK/server.log")"
    return 0
  fi
  if grep -q '"status": *"ok"' "$WORK/health.json"; then
    pass "/health says {\"status\":\"ok\",...}"
  else
    fail "/health says {\"status\":\"ok\",...}" "$(cat "$WORK/health.json")"
  fi
  ids=$(awk '/^Uid:/ {u=$2} /^Gid:/ {g=$2} END {print u ":" g}' "/proc/$pid/status" 2>/dev/null || true)
  if [[ $ids == "$UID_GID" ]]; then pass "the server runs as $UID_GID"; else fail "the server runs as $UID_GID" "uid:gid $ids"; fi

  local out
  root_cmd PORT="$port" -- healthcheck
  if out=$("${CMD[@]}" 2>&1); then
    pass "'/ai-service healthcheck' exits 0 while the server is up"
  else
    fail "'/ai-service healthcheck' exits 0 while the server is up" "$out"
  fi
  root_cmd PORT="$(free_port)" -- healthcheck
  if out=$("${CMD[@]}" 2>&1); then
    fail "'/ai-service healthcheck' exits non-zero when nothing listens" "it exited 0: $out"
  else
    pass "'/ai-service healthcheck' exits non-zero when nothing listens"
  fi

  stop "$pid"
  if [[ $STOPPED == 0 ]]; then
    pass "SIGTERM stops the server with exit code 0"
  else
    fail "SIGTERM stops the server with exit code 0" "exit: $STOPPED"$'\n'"$(tail -n 20 "$WORK/server.log")"
  fi
}

# A fake Azure OpenAI over HTTPS on 127.0.0.1, with a certificate from a CA
# made here; it answers chat completions and records what it was sent.
FAKE_AOAI='
import http.server, json, ssl, sys
port, cert, key, record = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(record, "a") as f:
            f.write(json.dumps({"path": self.path, "api_key": self.headers.get("api-key"),
                                "body": json.loads(body or b"{}")}) + "\n")
        out = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-5-mini",
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": "A static-root description."}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
'

test_upstream() {
  local name="a description is generated through TLS from the bare root (name from /etc/hosts, CA from SSL_CERT_FILE)"
  if ! command -v python3 >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
    skip "$name: needs python3 and openssl"
    return 0
  fi
  local pki=$WORK/pki tls_port fake out _
  mkdir -p "$pki"
  if ! out=$(
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=static-rootfs-test CA" \
      -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>&1 &&
      openssl req -newkey rsa:2048 -nodes -subj "/CN=$AOAI_HOST" -keyout "$pki/srv.key" -out "$pki/srv.csr" 2>&1 &&
      printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$AOAI_HOST" >"$pki/ext" &&
      openssl x509 -req -in "$pki/srv.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
        -extfile "$pki/ext" -out "$pki/srv.crt" 2>&1
  ); then
    fail "$name" "could not make the test certificates: $out"
    return 0
  fi
  # The image's bundle plus the test CA; and the /etc/hosts a pod gets.
  cat "$CA_BUNDLE" "$pki/ca.crt" >"$RFS/etc/ssl/certs/ca-certificates.crt"
  printf '127.0.0.1 localhost\n127.0.0.1 %s\n' "$AOAI_HOST" >"$RFS/etc/hosts"
  chmod 644 "$RFS/etc/hosts"

  tls_port=$(free_port)
  python3 -c "$FAKE_AOAI" "$tls_port" "$pki/srv.crt" "$pki/srv.key" "$WORK/aoai-requests.jsonl" >"$WORK/aoai.log" 2>&1 &
  fake=$!
  PIDS+=("$fake")
  for _ in $(seq 1 50); do
    curl -sk -o /dev/null "https://127.0.0.1:$tls_port/" 2>/dev/null && break
    sleep 0.2
  done
  if describe_via_root "$tls_port" "$WORK/server2.log" &&
    [[ ${DESCRIBED##*$'\n'} == 200 && $DESCRIBED == *"A static-root description."* ]] &&
    grep -q '"path": "/openai/deployments/gpt-5-mini/chat/completions' "$WORK/aoai-requests.jsonl" 2>/dev/null &&
    grep -q '"api_key": "static-test-key"' "$WORK/aoai-requests.jsonl"; then
    pass "$name"
  else
    fail "$name" "answer: $DESCRIBED"$'\n'"fake Azure OpenAI saw: $(cat "$WORK/aoai-requests.jsonl" 2>/dev/null)"$'\n'"$(tail -n 30 "$WORK/server2.log")"
  fi
  if [[ $CHECKED == 0 ]]; then
    pass "'/ai-service check' succeeds against that endpoint from the bare root"
  else
    fail "'/ai-service check' succeeds against that endpoint from the bare root" "exit $CHECKED: $CHECK_OUT"
  fi

  # The same call with the image's own bundle, which does not vouch for the
  # test CA, must fail: proves certificates are verified against the file.
  cp "$CA_BUNDLE" "$RFS/etc/ssl/certs/ca-certificates.crt"
  : >"$WORK/aoai-requests.jsonl"
  name="a certificate the bundle does not vouch for is refused"
  if describe_via_root "$tls_port" "$WORK/server3.log" && [[ ${DESCRIBED##*$'\n'} != 200 && $CHECKED == 1 && ! -s $WORK/aoai-requests.jsonl ]]; then
    pass "$name"
  else
    fail "$name" "answer: $DESCRIBED"$'\n'"$(tail -n 30 "$WORK/server3.log")"
  fi
  kill "$fake" 2>/dev/null || true
}

# Starts the service configured for the fake Azure OpenAI on port $1 (log
# in $2), asks it for a description, stops it. Sets DESCRIBED to the body
# and the status code on the last line, and CHECKED and CHECK_OUT to the exit
# code and output of `/ai-service check` with the same settings; fails if
# the server did not start.
describe_via_root() {
  local port pid
  port=$(free_port)
  root_cmd PORT="$port" SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    USE_AZURE_OPENAI=True AZURE_OPENAI_ENDPOINT="https://$AOAI_HOST:$1/" \
    AZURE_OPENAI_DEPLOYMENT_NAME=gpt-5-mini AZURE_OPENAI_API_KEY=static-test-key --
  "${CMD[@]}" >"$2" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  DESCRIBED="the server did not start"
  CHECKED=unknown
  CHECK_OUT=""
  wait_healthy "$port" "$pid" || return 1
  DESCRIBED=$(curl -s -m 30 -w '\n%{http_code}' -H 'content-type: application/json' \
    -d '{"name":"Seafarer'"'"'s Tug Rope","tags":["toy","dog"]}' \
    "http://127.0.0.1:$port/generate/description" 2>&1 || true)
  # The troubleshooting command of k8s/README.md, with the same settings.
  CMD+=(check)
  CHECKED=0
  CHECK_OUT=$("${CMD[@]}" 2>&1) || CHECKED=$?
  stop "$pid"
  [[ $STOPPED == 0 ]] || fail "SIGTERM stops the configured server with exit code 0" "exit: $STOPPED"
  return 0
}

report_sizes() {
  local bin_bytes ca_bytes stripped_bytes=""
  bin_bytes=$(wc -c <"$BIN")
  ca_bytes=$(wc -c <"$CA_BUNDLE")
  if command -v strip >/dev/null 2>&1; then
    cp "$BIN" "$WORK/stripped" && strip "$WORK/stripped" && stripped_bytes=$(wc -c <"$WORK/stripped")
  fi
  awk -v b="$bin_bytes" -v c="$ca_bytes" -v s="$stripped_bytes" 'BEGIN {
    printf "# binary: %.1f MiB (%d bytes)", b / 1048576, b
    if (s != "") printf "; stripped it would be %.1f MiB", s / 1048576
    printf "\n# CA bundle: %.0f KiB\n", c / 1024
    printf "# estimated image size (binary + CA bundle, uncompressed): %.1f MiB\n", (b + c) / 1048576
  }'
}

main() {
  if [[ $(id -u) != 0 ]]; then
    echo "error: this test needs root (it uses chroot). Run it as root, as CI does." >&2
    exit 1
  fi
  local tool
  for tool in curl chroot file ldd; do
    command -v "$tool" >/dev/null 2>&1 || {
      echo "error: $tool is not on PATH; install it (apt-get install curl coreutils file libc-bin)." >&2
      exit 1
    }
  done
  CHROOT=$(command -v chroot)
  [[ -r $CA_BUNDLE ]] || {
    echo "error: no CA bundle at $CA_BUNDLE; install ca-certificates." >&2
    exit 1
  }
  WORK=$(mktemp -d)
  chmod 755 "$WORK"
  build
  check_static
  make_root
  test_server
  test_upstream
  report_sizes
  summary
}

main "$@"
