#!/usr/bin/env bash
# make bench: the release service against a mock Azure OpenAI + Entra token endpoint
# over HTTPS on loopback, driven by wrk. Writes bench/results/bench.md and prints it.
# Every load phase is bounded (PHASE_SECONDS); the whole run takes about 1-2 minutes
# once the release build exists.
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

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)"
  { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null
fi

cargo build --locked --release --bin ai-service --example mock_upstream
target_dir=${CARGO_TARGET_DIR:-target}
bin=$target_dir/release/ai-service
mock=$target_dir/release/examples/mock_upstream

MOCK_LATENCY_MS=$LATENCY_MS MOCK_CA_OUT="$work/ca.pem" MOCK_PORT_OUT="$work/port" "$mock" &
pids+=($!)
for _ in $(seq 100); do [[ -s "$work/port" && -s "$work/ca.pem" ]] && break; sleep 0.05; done
mock_port=$(cat "$work/port")
mock_url="https://localhost:$mock_port/"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphaS1zZXJ2aWNlLWFjY291bnQifQ." > "$work/token"

start_ns=$(date +%s%N)
env -i PATH="$PATH" PORT="$port" RUST_LOG=warn SSL_CERT_FILE="$work/ca.pem" \
  USE_AZURE_OPENAI=True USE_AZURE_AD=True \
  AZURE_OPENAI_ENDPOINT="$mock_url" AZURE_OPENAI_DEPLOYMENT_NAME=gpt-5-mini \
  AZURE_CLIENT_ID=00000000-0000-0000-0000-000000000001 AZURE_TENANT_ID=00000000-0000-0000-0000-000000000002 \
  AZURE_FEDERATED_TOKEN_FILE="$work/token" AZURE_AUTHORITY_HOST="$mock_url" \
  "$bin" > "$work/service.log" 2>&1 &
service=$!
pids+=($service)
until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health") == 200 ]]; do
  kill -0 "$service" 2>/dev/null || { cat "$work/service.log"; exit 1; }
done
startup_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$service/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$service/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$service/stat"; }
ticks_per_s=$(getconf CLK_TCK)
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
# wrk prints latencies like 101.23ms, 1.02s or 950.00us; convert to milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us$/,"",v); printf "%.2f", v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); printf "%.2f", v} else if (v ~ /s$/) {sub(/s$/,"",v); printf "%.2f", v*1000} else print v }'; }

sleep 1
idle_rss=$(rss_kib)
# One request first, so the token acquisition is not part of any phase.
curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{"name":"warm","tags":[]}' "http://127.0.0.1:$port/generate/description"

rows=()
max_load_rss=0
phase() { # concurrency latency_ms
  local c=$1 latency=$2 threads=2
  (( c < 2 )) && threads=1
  curl -s -X PUT "https://localhost:$mock_port/latency/$latency" --cacert "$work/ca.pem" >/dev/null
  local before_ticks; before_ticks=$(cpu_ticks)
  local before_chat; before_chat=$(curl -s "https://localhost:$mock_port/stats" --cacert "$work/ca.pem" | python3 -c 'import json,sys; print(json.load(sys.stdin)["chat_requests"])')
  ( peak=0; while kill -0 "$service" 2>/dev/null; do r=$(rss_kib); (( r > peak )) && peak=$r && echo "$peak" > "$work/load_rss"; sleep 0.2; done ) &
  local sampler=$!
  wrk -t"$threads" -c"$c" -d"${PHASE_SECONDS}s" --latency -s bench/post.lua "http://127.0.0.1:$port/generate/description" > "$work/wrk.txt"
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  local load_rss; load_rss=$(cat "$work/load_rss" 2>/dev/null || echo 0)
  (( load_rss > max_load_rss )) && max_load_rss=$load_rss
  local ticks=$(( $(cpu_ticks) - before_ticks ))
  local rps p50 p99 requests errors non2xx
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.txt")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$work/wrk.txt")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")")
  requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.txt"); non2xx=${non2xx:-0}
  errors=$(awk '/Socket errors/ {print}' "$work/wrk.txt"); errors=${errors:-none}
  local after_chat; after_chat=$(curl -s "https://localhost:$mock_port/stats" --cacert "$work/ca.pem" | python3 -c 'import json,sys; print(json.load(sys.stdin)["chat_requests"])')
  local bound="-" efficiency="-"
  if (( latency > 0 )); then
    bound=$(( c * 1000 / latency ))
    efficiency=$(awk -v r="$rps" -v b="$bound" 'BEGIN {printf "%.1f%%", 100 * r / b}')
  fi
  local added50 added99 cpu_us
  added50=$(awk -v p="$p50" -v l="$latency" 'BEGIN {printf "%.2f", p - l}')
  added99=$(awk -v p="$p99" -v l="$latency" 'BEGIN {printf "%.2f", p - l}')
  cpu_us=$(awk -v t="$ticks" -v hz="$ticks_per_s" -v n="$requests" 'BEGIN {printf "%.0f", (n > 0) ? 1e6 * t / hz / n : 0}')
  rows+=("| $c | $latency | $rps | $bound | $efficiency | $p50 | $p99 | $added50 | $added99 | $cpu_us | $(mib "$load_rss") | $non2xx | $(( after_chat - before_chat )) |")
  echo "phase c=$c latency=${latency}ms: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors: $errors" >&2
}

phase 1 $LATENCY_MS
phase 16 $LATENCY_MS
phase 64 $LATENCY_MS
phase 256 $LATENCY_MS
phase 16 0

peak_rss=$(hwm_kib)
stats=$(curl -s "https://localhost:$mock_port/stats" --cacert "$work/ca.pem")
token_requests=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["token_requests"])' "$stats")
chat_requests=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["chat_requests"])' "$stats")
per_thousand=$(awk -v t="$token_requests" -v c="$chat_requests" 'BEGIN {printf "%.4f", 1000 * t / c}')

{
  echo "## Benchmark ($(date -u +%Y-%m-%d), $(nproc) cores, \`make bench\`)"
  echo
  echo "Release binary against a mock Azure OpenAI + Entra token endpoint over HTTPS on loopback (workload identity, one-hour tokens), wrk, ${PHASE_SECONDS} s per phase."
  echo
  echo "| concurrency | upstream latency (ms) | requests/s | bound c/latency | of bound | p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) | CPU µs/request | RSS under load (MiB) | non-2xx | upstream calls |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "| measure | value |"
  echo "|---|---|"
  echo "| startup to first 200 on /health | ${startup_ms} ms |"
  echo "| idle RSS | $(mib "$idle_rss") MiB |"
  echo "| RSS under load (max sampled) | $(mib "$max_load_rss") MiB |"
  echo "| peak RSS (VmHWM) | $(mib "$peak_rss") MiB |"
  echo "| token requests / upstream calls | $token_requests / $chat_requests |"
  echo "| token requests per 1,000 requests | $per_thousand |"
  echo "| release binary size | $(( $(stat -c %s "$bin") / 1024 )) KiB |"
} > "$RESULTS/bench.md"
cat "$RESULTS/bench.md"
