#!/usr/bin/env bash
# scripts/static-rootfs-test.sh: builds the binary the Dockerfile builds
# (scripts/static-build.sh, for this machine) and runs it the way the FROM
# scratch image runs it, without Docker: in an otherwise empty, read-only
# root holding only /ai-service and the CA bundle, as user 65532:65532, with
# no environment but PORT and SSL_CERT_FILE.
#
# The empty root, by what the machine allows:
#   as root: chroot, as user 65532:65532;
#   as anyone else: a user namespace (unshare --user) in which the caller's
#     own uid and gid are 65532:65532 (unshare --map-user, util-linux 2.38+),
#     or, with an older unshare, the namespace's root (unprivileged outside);
#   neither: the test fails, saying what is missing.
# As root it also runs the server checks in a user namespace, so that CI
# covers the path a contributor without root takes.
#
# Checks that the binary is static, serves /health, that its `healthcheck`
# subcommand (the image's HEALTHCHECK) works, that it stops cleanly on
# SIGTERM, and that from the bare root it can resolve a name and call an
# Azure OpenAI endpoint over TLS, trusting only the bundle (a local fake
# endpoint with a test CA), and that the image (binary + CA bundle) stays
# within 10 MB. Prints the binary and estimated image sizes and
# "N passed, M failed". Needs curl, file, ldd, python3 and openssl.
#
#   scripts/static-rootfs-test.sh
#   AI_SERVICE_BIN=path/to/ai-service scripts/static-rootfs-test.sh   # skip the build
#   CARGO_TARGET_DIR=/tmp/t scripts/static-rootfs-test.sh             # build elsewhere
#   STATIC_ROOTFS_MODE=userns-root scripts/static-rootfs-test.sh      # force one way: chroot, userns, userns-root
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
UID_GID=65532:65532
# The fake Azure OpenAI host; /etc/hosts in the root maps it to 127.0.0.1,
# as the kubelet's /etc/hosts would map a name in a pod.
AOAI_HOST=aoai-static-test.openai.azure.com

# shellcheck source=scripts/tap.sh
source "$ROOT/scripts/tap.sh"
summary() {
  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
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
  if [[ -n $WORK ]]; then
    # The root is read-only (seal): give its owner the write bits back first.
    chmod -R u+w "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

# Prints a TCP port nobody listens on (the kernel picks it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 30000))
}

# Sets CMD to the command that runs /ai-service ARGS in the root, the way
# MODE says, with only the given variables: root_cmd VAR=VALUE... -- ARGS...
# (env, chroot and unshare exec, so a background "${CMD[@]}" & has the
# service's pid.)
#   chroot:      as root; chroot to the root as 65532:65532.
#   userns:      a new user namespace in which the caller's uid and gid are
#                65532:65532; unshare chroots (--root) before it execs.
#   userns-root: a new user namespace in which the caller is root (the only
#                id mapped without newuidmap on an unshare older than 2.38).
root_cmd() {
  CMD=(env -i)
  while [[ $1 != -- ]]; do
    CMD+=("$1")
    shift
  done
  shift
  case $MODE in
    chroot) CMD+=("$CHROOT" --userspec="$UID_GID" "$RFS") ;;
    userns) CMD+=("$UNSHARE" --user --map-user="${UID_GID%:*}" --map-group="${UID_GID#*:}" --root="$RFS") ;;
    userns-root) CMD+=("$UNSHARE" --user --map-root-user "$CHROOT" "$RFS") ;;
  esac
  CMD+=(/ai-service "$@")
}

# Prints "UID:GID" of process $1 as its own user namespace sees them: the
# ids in /proc/PID/status are this namespace's, and /proc/PID/uid_map and
# gid_map ("inside outside count" lines) translate them.
ids_inside() {
  local uid gid
  uid=$(awk '/^Uid:/ {print $2}' "/proc/$1/status") || return 1
  gid=$(awk '/^Gid:/ {print $2}' "/proc/$1/status") || return 1
  printf '%s:%s\n' "$(map_inside "$uid" "/proc/$1/uid_map")" "$(map_inside "$gid" "/proc/$1/gid_map")"
}
map_inside() {
  awk -v id="$1" '$2 <= id && id < $2 + $3 {print $1 + id - $2; found = 1; exit}
    END {if (!found) print "unmapped(" id ")"}' "$2"
}

# The root is read-only for the service (like the image with
# readOnlyRootFilesystem: it must not need to write anywhere). In a user
# namespace the files are the service's own, so no write bit is left.
seal() { chmod -R a-w "$RFS"; }
unseal() { chmod -R u+w "$RFS"; }

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
  # The build as the Dockerfile runs it, so the profile is the image's.
  local plan profile name out
  plan=$(bash "$ROOT/scripts/static-build.sh" --print | paste -sd ' ')
  profile=$(sed -n 's/.* --profile \([^ ]*\).*/\1/p' <<<"$plan")
  echo "# building: $plan"
  name="the static build of the image's binary succeeds (scripts/static-build.sh, profile ${profile:-?})"
  if out=$(bash "$ROOT/scripts/static-build.sh" --out "$BIN" 2>&1); then
    pass "$name"
  else
    fail "$name" "$(tail -n 40 <<<"$out")"
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
  chmod 755 "$RFS" "$RFS/etc" "$RFS/etc/ssl" "$RFS/etc/ssl/certs" "$RFS/ai-service"
  chmod 644 "$RFS/etc/ssl/certs/ca-certificates.crt"
  seal
}

# Runs `/ai-service --version` in the root the MODE way; sets PROBE_OUT.
probe_mode() {
  root_cmd --  --version
  PROBE_OUT=$("${CMD[@]}" 2>&1) && [[ $PROBE_OUT == *ai-service* ]]
}

# The image's default: nothing configured, so the service starts offline.
test_server() {
  local port pid ids caps outside name
  port=$(free_port)
  root_cmd PORT="$port" SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --
  "${CMD[@]}" >"$WORK/server.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  if wait_healthy "$port" "$pid"; then
    pass "GET /health answers 200 in the bare root within 10 s$SUFFIX"
  else
    fail "GET /health answers 200 in the bare root within 10 s$SUFFIX" "$(tail -n 30 "$WORK/server.log")"
    return 0
  fi
  if grep -q '"status": *"ok"' "$WORK/health.json"; then
    pass "/health says {\"status\":\"ok\",...}$SUFFIX"
  else
    fail "/health says {\"status\":\"ok\",...}$SUFFIX" "$(cat "$WORK/health.json")"
  fi
  ids=$(ids_inside "$pid" 2>&1 || true)
  caps=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
  outside=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
  if [[ $MODE == userns-root ]]; then
    name="the server runs as the user namespace's root (0:0), uid $(id -u) outside, not root$SUFFIX"
    if [[ $ids == 0:0 && $outside == "$(id -u)" && $outside != 0 ]]; then pass "$name"; else fail "$name" "uid:gid inside $ids, uid outside $outside"; fi
  else
    name="the server runs as $UID_GID with no capabilities$SUFFIX"
    if [[ $ids == "$UID_GID" && $caps =~ ^0+$ ]]; then pass "$name"; else fail "$name" "uid:gid $ids, CapEff $caps"; fi
  fi

  local out
  root_cmd PORT="$port" -- healthcheck
  if out=$("${CMD[@]}" 2>&1); then
    pass "'/ai-service healthcheck' exits 0 while the server is up$SUFFIX"
  else
    fail "'/ai-service healthcheck' exits 0 while the server is up$SUFFIX" "$out"
  fi
  root_cmd PORT="$(free_port)" -- healthcheck
  if out=$("${CMD[@]}" 2>&1); then
    fail "'/ai-service healthcheck' exits non-zero when nothing listens$SUFFIX" "it exited 0: $out"
  else
    pass "'/ai-service healthcheck' exits non-zero when nothing listens$SUFFIX"
  fi

  stop "$pid"
  if [[ $STOPPED == 0 ]]; then
    pass "SIGTERM stops the server with exit code 0$SUFFIX"
  else
    fail "SIGTERM stops the server with exit code 0$SUFFIX" "exit: $STOPPED"$'\n'"$(tail -n 20 "$WORK/server.log")"
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
  local name="a description is generated through TLS from the bare root (name from /etc/hosts, CA from SSL_CERT_FILE)$SUFFIX"
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
  unseal
  cat "$CA_BUNDLE" "$pki/ca.crt" >"$RFS/etc/ssl/certs/ca-certificates.crt"
  printf '127.0.0.1 localhost\n127.0.0.1 %s\n' "$AOAI_HOST" >"$RFS/etc/hosts"
  chmod 644 "$RFS/etc/hosts"
  seal

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
    pass "'/ai-service check' succeeds against that endpoint from the bare root$SUFFIX"
  else
    fail "'/ai-service check' succeeds against that endpoint from the bare root$SUFFIX" "exit $CHECKED: $CHECK_OUT"
  fi

  # The same call with the image's own bundle, which does not vouch for the
  # test CA, must fail: proves certificates are verified against the file.
  unseal
  cp "$CA_BUNDLE" "$RFS/etc/ssl/certs/ca-certificates.crt"
  seal
  : >"$WORK/aoai-requests.jsonl"
  name="a certificate the bundle does not vouch for is refused$SUFFIX"
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
  # The budget of the image (README, Performance: image <= 10 MB): the dist
  # profile is what keeps it; the release profile's binary alone is ~12 MB.
  local name="the image (binary + CA bundle) is at most 10 MB"
  if ((bin_bytes + ca_bytes <= 10000000)); then
    pass "$name ($((bin_bytes + ca_bytes)) bytes)"
  else
    fail "$name" "binary $bin_bytes + CA bundle $ca_bytes = $((bin_bytes + ca_bytes)) bytes"
  fi
}

# use_mode MODE: the way the next checks run the binary (see root_cmd).
use_mode() {
  MODE=$1
  case $MODE in
    chroot) SUFFIX=" [chroot]" ;;
    userns) SUFFIX=" [user namespace]" ;;
    userns-root) SUFFIX=" [user namespace, as its root]" ;;
    *)
      echo "error: STATIC_ROOTFS_MODE must be chroot, userns or userns-root, not '$MODE'." >&2
      exit 2
      ;;
  esac
}

# Sets MODES to the ways this machine allows, best first: chroot as root, a
# user namespace mapping the caller to 65532, one mapping it to root. Sets
# WHY_NOT to what the user-namespace probe said when it failed.
find_modes() {
  MODES=()
  WHY_NOT=""
  if [[ -n ${STATIC_ROOTFS_MODE:-} ]]; then
    MODES=("$STATIC_ROOTFS_MODE")
    return 0
  fi
  local mode candidates=(userns userns-root)
  if [[ $(id -u) == 0 ]]; then
    MODES+=(chroot)
    # Root's own uid is 0 in any namespace: only the 65532 mapping is a check.
    candidates=(userns)
  fi
  if [[ -z $UNSHARE ]]; then
    WHY_NOT="unshare is not on PATH (Debian: util-linux)"
    return 0
  fi
  for mode in "${candidates[@]}"; do
    use_mode "$mode"
    if probe_mode; then
      MODES+=("$mode")
      break
    fi
    WHY_NOT=${WHY_NOT:-$(head -n 1 <<<"$PROBE_OUT")}
  done
}

main() {
  local tool
  for tool in curl file ldd python3 openssl; do
    command -v "$tool" >/dev/null 2>&1 || {
      echo "error: $tool is not on PATH; install it (Debian: apt-get install curl file libc-bin python3 openssl)." >&2
      exit 1
    }
  done
  # chroot lives in /usr/sbin, which a non-root user's PATH often lacks; only root needs it.
  CHROOT=$(PATH="$PATH:/usr/sbin:/sbin" command -v chroot || true)
  UNSHARE=$(PATH="$PATH:/usr/sbin:/sbin" command -v unshare || true)
  [[ -n $CHROOT || $(id -u) != 0 ]] || {
    echo "error: chroot is not on PATH; install coreutils." >&2
    exit 1
  }
  [[ -r $CA_BUNDLE ]] || {
    echo "error: no CA bundle at $CA_BUNDLE; install ca-certificates." >&2
    exit 1
  }
  WORK=$(mktemp -d)
  chmod 755 "$WORK"
  build
  check_static
  make_root
  find_modes
  if [[ ${#MODES[@]} == 0 ]]; then
    fail "the binary can run in an empty root here" \
      "this test needs root (for chroot) or unprivileged user namespaces (unshare --user from util-linux), and this machine allows neither (${WHY_NOT}); run it as root, or allow user namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone or kernel.apparmor_restrict_unprivileged_userns)."
    summary
    exit 1
  fi
  use_mode "${MODES[0]}"
  echo "# running the binary in the empty root with $MODE${SUFFIX:+ (checks marked$SUFFIX)}"
  test_server
  test_upstream
  # As root (CI), the way a contributor without root runs it, too.
  if [[ ${#MODES[@]} -gt 1 ]]; then
    use_mode "${MODES[1]}"
    echo "# and the server checks again the way a non-root user runs them: $MODE"
    test_server
  elif [[ $MODE == chroot && -z ${STATIC_ROOTFS_MODE:-} ]]; then
    echo "# user namespaces are not available here (${WHY_NOT}): the non-root way is not checked"
  fi
  report_sizes
  summary
}

main "$@"
