#!/usr/bin/env bash
# bench/failover.sh: the cost of model routing when the primary deployment is out of
# quota. Two services against the same mock Azure OpenAI (HTTPS on loopback, 100 ms):
#   direct   - one deployment that answers;
#   failover - a pool whose first deployment answers every request with 429
#              (retry-after-ms: 0, so every request tries it first) and whose second answers.
# For each, wrk at concurrency 16 and 64 reports req/s, p50 and p99; the "added" columns
# are failover minus direct. Writes bench/results/failover.md and prints it.
#
#   bench/failover.sh                      (make bench runs it after bench/run.sh)
#   AI_SERVICE_BIN=... MOCK_BIN=... bench/failover.sh   use built binaries
set -euo pipefail
cd "$(dirname "$0")/.."

PHASE_SECONDS=${PHASE_SECONDS:-8}
LATENCY_MS=100
RESULTS=bench/results
mkdir -p "$RESULTS"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

command -v wrk >/dev/null || { echo "wrk is missing (bench/run.sh installs it)" >&2; exit 1; }
target_dir=${CARGO_TARGET_DIR:-target}
bin=${AI_SERVICE_BIN:-}
mock=${MOCK_BIN:-}
if [[ -z $bin ]]; then
  cargo build --locked --release --bin ai-service
  bin=$target_dir/release/ai-service
fi
if [[ -z $mock ]]; then
  cargo build --locked --release --example mock_upstream
  mock=$target_dir/release/examples/mock_upstream
fi

MOCK_LATENCY_MS=$LATENCY_MS MOCK_CA_OUT="$work/ca.pem" MOCK_PORT_OUT="$work/port" "$mock" &
pids+=("$!")
for _ in $(seq 100); do [[ -s "$work/port" && -s "$work/ca.pem" ]] && break; sleep 0.05; done
mock_url="https://localhost:$(cat "$work/port")/"
stats() { curl -s "${mock_url}stats" --cacert "$work/ca.pem"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cat > "$work/pool.toml" <<EOF
[[chat]]
endpoint = "$mock_url"
deployment = "gpt-5-mini"
EOF

# start NAME DEPLOYMENT [extra env...]: the service, on a free port (in $port), key mode.
# Not called in $(...): a subshell's pids+= would not reach cleanup, and the services
# would outlive the benchmark.
start() {
  local name=$1 deployment=$2
  shift 2
  port=$(free_port)
  env -i PATH="$PATH" PORT="$port" HOST=127.0.0.1 RUST_LOG=warn SSL_CERT_FILE="$work/ca.pem" \
    USE_AZURE_OPENAI=True AZURE_OPENAI_ENDPOINT="$mock_url" AZURE_OPENAI_DEPLOYMENT_NAME="$deployment" \
    AZURE_OPENAI_API_KEY=bench-key "$@" "$bin" > "$work/$name.log" 2>&1 &
  pids+=("$!")
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health") == 200 ]]; do sleep 0.05; done
}
start direct gpt-5-mini
direct_port=$port
start failover throttled-primary AI_SERVICE_CONFIG="$work/pool.toml"
failover_port=$port

to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us$/,"",v); printf "%.2f", v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); printf "%.2f", v} else if (v ~ /s$/) {sub(/s$/,"",v); printf "%.2f", v*1000} else print v }'; }
# measure PORT CONCURRENCY: sets RPS P50 P99 NON2XX.
measure() {
  local url="http://127.0.0.1:$1/generate/description" c=$2
  wrk -t2 -c"$c" -d2s -s bench/post.lua "$url" > /dev/null
  wrk -t2 -c"$c" -d"${PHASE_SECONDS}s" --latency -s bench/post.lua "$url" > "$work/wrk.txt"
  RPS=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.txt")
  P50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$work/wrk.txt")")
  P99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")")
  NON2XX=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.txt")
  NON2XX=${NON2XX:-0}
}

rows=()
for c in 16 64; do
  measure "$direct_port" "$c"
  d_rps=$RPS d_p50=$P50 d_p99=$P99 d_bad=$NON2XX
  before=$(stats)
  measure "$failover_port" "$c"
  after=$(stats)
  throttled=$(( $(field "$after" throttled_requests) - $(field "$before" throttled_requests) ))
  answered=$(( $(field "$after" chat_requests) - $(field "$before" chat_requests) ))
  bound=$(( c * 1000 / LATENCY_MS ))
  rows+=("| $c | $d_rps | $RPS | $(awk -v r="$RPS" -v b="$bound" 'BEGIN {printf "%.1f%%", 100 * r / b}') | $d_p50 | $P50 | $(awk -v a="$P50" -v b="$d_p50" 'BEGIN {printf "%.2f", a - b}') | $d_p99 | $P99 | $(awk -v a="$P99" -v b="$d_p99" 'BEGIN {printf "%.2f", a - b}') | $(( d_bad + NON2XX )) | $throttled / $answered |")
  echo "failover c=$c: direct $d_rps req/s p50 $d_p50 ms; failover $RPS req/s p50 $P50 ms" >&2
done

{
  echo "## Failover ($(date -u +%Y-%m-%d), $(nproc) cores, \`make bench\` / \`bench/failover.sh\`)"
  echo
  echo "The service binary (under make bench, the one the bench built), key mode, mock Azure OpenAI over HTTPS on loopback with ${LATENCY_MS} ms per answer; wrk ${PHASE_SECONDS} s per row after a 2 s warm-up. *Direct*: one deployment. *Failover*: the primary answers every request 429 at once (retry-after-ms 0), so every request is refused by it and answered by the second deployment."
  echo
  echo "| concurrency | direct req/s | failover req/s | failover of bound (c/latency) | direct p50 (ms) | failover p50 (ms) | added p50 (ms) | direct p99 (ms) | failover p99 (ms) | added p99 (ms) | non-2xx | 429s from the primary / answers from the second |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} > "$RESULTS/failover.md"
cat "$RESULTS/failover.md"
