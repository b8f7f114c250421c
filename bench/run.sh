#!/usr/bin/env bash
# make bench: the static service (profile dist, as the image ships it) against a mock
# Azure OpenAI + Entra token endpoint over HTTPS on loopback, driven by wrk. Writes
# bench/results/bench.md and prints it. Every load phase is bounded (PHASE_SECONDS);
# the whole run takes about 3 minutes once the build exists. Last, the service runs
# again inside a 50 millicore CPU quota (the seed's Kubernetes limit) when this user
# can make a cgroup (root).
set -euo pipefail
cd "$(dirname "$0")/.."

PHASE_SECONDS=${PHASE_SECONDS:-8}
LATENCY_MS=100
# The profile the image ships (Dockerfile, make static); PROFILE=release compares.
PROFILE=${PROFILE:-dist}
QUOTA_US=5000 # per PERIOD_US: 50 millicores, as Kubernetes writes `limits: cpu: 50m`
PERIOD_US=100000
STARTUP_RUNS=7
RESULTS=bench/results
mkdir -p "$RESULTS"
work=$(mktemp -d)
pids=()
cgroup= # the quota's cgroup directory, once made
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ -n $cgroup ]]; then
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rmdir "$cgroup" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package)"
  { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null
fi

# The service is measured as it ships: the Dockerfile's static binary, built by the one
# definition of that build (scripts/static-build.sh: profile, flags and why).
target_dir=${CARGO_TARGET_DIR:-target}
bash scripts/static-build.sh --profile "$PROFILE" --out "$work/ai-service"
cargo build --locked --release --example mock_upstream
bin=$work/ai-service
# BENCH_BIN=path measures another build (e.g. an older one) in the same conditions.
bin=${BENCH_BIN:-$bin}
mock=$target_dir/release/examples/mock_upstream

MOCK_LATENCY_MS=$LATENCY_MS MOCK_CA_OUT="$work/ca.pem" MOCK_PORT_OUT="$work/port" "$mock" &
pids+=("$!")
for _ in $(seq 100); do [[ -s "$work/port" && -s "$work/ca.pem" ]] && break; sleep 0.05; done
mock_port=$(cat "$work/port")
mock_url="https://localhost:$mock_port/"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphaS1zZXJ2aWNlLWFjY291bnQifQ." > "$work/token"

# The service's command line: workload identity against the mock, logging at warn.
service_cmd=(env -i PATH="$PATH" PORT="$port" RUST_LOG=warn SSL_CERT_FILE="$work/ca.pem"
  USE_AZURE_OPENAI=True USE_AZURE_AD=True
  AZURE_OPENAI_ENDPOINT="$mock_url" AZURE_OPENAI_DEPLOYMENT_NAME=gpt-5-mini AZURE_OPENAI_IMAGE_DEPLOYMENT_NAME=gpt-image-1
  AZURE_CLIENT_ID=00000000-0000-0000-0000-000000000001 AZURE_TENANT_ID=00000000-0000-0000-0000-000000000002
  AZURE_FEDERATED_TOKEN_FILE="$work/token" AZURE_AUTHORITY_HOST="$mock_url"
  "$bin")
median() { sort -n | awk '{v[NR] = $1} END {printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
range() { sort -n | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s-%s", lo, hi}'; }
# mock_stat NAME: one counter of the mock's GET /stats.
mock_stat() { curl -s "https://localhost:$mock_port/stats" --cacert "$work/ca.pem" | python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
token_requests() { mock_stat token_requests; }

# Startup, from exec to the first 200 on /health, several times (one start is noise).
python3 bench/startup.py "$STARTUP_RUNS" "$port" "$work/startup.log" -- "${service_cmd[@]}" > "$work/startup.txt"
startup_median=$(median < "$work/startup.txt")
startup_range=$(range < "$work/startup.txt")

# wait_healthy PID PORT LOG: until the service answers /health; its log and exit if it died.
wait_healthy() {
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/health") == 200 ]]; do
    kill -0 "$1" 2>/dev/null || { cat "$3"; exit 1; }
  done
}

tokens_before=$(token_requests) # the startup runs fetched some
"${service_cmd[@]}" > "$work/service.log" 2>&1 &
service=$!
pids+=("$service")
wait_healthy "$service" "$port" "$work/service.log"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$service/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$service/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$service/stat"; }
ticks_per_s=$(getconf CLK_TCK)
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
# wrk prints latencies like 101.23ms, 1.02s or 950.00us; convert to milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) {sub(/us$/,"",v); printf "%.2f", v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); printf "%.2f", v} else if (v ~ /s$/) {sub(/s$/,"",v); printf "%.2f", v*1000} else print v }'; }

# Idle: 2 s after the startup token fetch (its TLS connection and buffers included).
idle_after_token() {
  local before=$1
  for _ in $(seq 200); do (( $(token_requests) > before )) && break; sleep 0.05; done
  sleep 2
  idle_rss=$(rss_kib)
  idle_threads=$(awk '/^Threads/ {print $2}' "/proc/$service/status")
}
idle_after_token "$tokens_before"
# One request first, so the token acquisition is not part of any phase.
curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{"name":"warm","tags":[]}' "http://127.0.0.1:$port/generate/description"

rows=()
quota_rows=()
trace_rows=()
in_quota=
trace_label=
trace_exports() { mock_stat trace_exports; }
# "periods throttled": the quota cgroup's cpu.stat counters (v1 and v2 name them alike)
throttled() {
  if [[ -n $in_quota ]]; then awk '$1 == "nr_periods" {p = $2} $1 == "nr_throttled" {t = $2} END {print p, t}' "$cgroup/cpu.stat"; fi
}
max_load_rss=0
service_calls=1 # the warm-up request
phase() { # concurrency latency_ms [jitter_ms: each answer waits latency + U(0, jitter)]
  local c=$1 latency=$2 jitter=${3:-0} threads=2
  (( c < 2 )) && threads=1
  curl -s -X PUT "https://localhost:$mock_port/latency/$latency" --cacert "$work/ca.pem" >/dev/null
  curl -s -X PUT "https://localhost:$mock_port/jitter/$jitter" --cacert "$work/ca.pem" >/dev/null
  # Warm-up at the same concurrency (not measured): the upstream pool opens its
  # connections (a TLS handshake each) before the measured run.
  wrk -t"$threads" -c"$c" -d2s -s bench/post.lua "http://127.0.0.1:$port/generate/description" > /dev/null
  ( peak=0; while kill -0 "$service" 2>/dev/null; do r=$(rss_kib); (( r > peak )) && peak=$r && echo "$peak" > "$work/load_rss"; sleep 0.2; done ) &
  local sampler=$!
  local before_ticks; before_ticks=$(cpu_ticks)
  local before_throttled; before_throttled=$(throttled)
  local before_chat; before_chat=$(mock_stat chat_requests)
  wrk -t"$threads" -c"$c" -d"${PHASE_SECONDS}s" --latency -s bench/post.lua "http://127.0.0.1:$port/generate/description" > "$work/wrk.txt"
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  local load_rss; load_rss=$(cat "$work/load_rss" 2>/dev/null || echo 0)
  (( load_rss > max_load_rss )) && max_load_rss=$load_rss
  local ticks=$(( $(cpu_ticks) - before_ticks ))
  local after_throttled; after_throttled=$(throttled)
  local rps p50 p99 requests errors non2xx
  rps=$(awk '/^Requests\/sec/ {print $2}' "$work/wrk.txt")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$work/wrk.txt")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")")
  requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.txt"); non2xx=${non2xx:-0}
  errors=$(awk '/Socket errors/ {print}' "$work/wrk.txt"); errors=${errors:-none}
  local after_chat; after_chat=$(mock_stat chat_requests)
  service_calls=$(( service_calls + after_chat - before_chat ))
  local bound="-" efficiency="-"
  if (( latency > 0 )); then
    bound=$(( c * 2000 / (2 * latency + jitter) )) # concurrency / mean latency
    efficiency=$(awk -v r="$rps" -v b="$bound" 'BEGIN {printf "%.1f%%", 100 * r / b}')
  fi
  # The upstream alone at the same concurrency: what the service adds is the difference.
  local direct50="-" direct99="-" added50 added99 cpu_us
  if (( latency > 0 )); then
    wrk -t"$threads" -c"$c" -d"$(( PHASE_SECONDS / 2 ))s" --latency -s bench/post.lua \
      "https://localhost:$mock_port/openai/deployments/gpt-5-mini/chat/completions?api-version=2024-12-01-preview" > "$work/direct.txt"
    direct50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$work/direct.txt")")
    direct99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$work/direct.txt")")
  else
    direct50=0; direct99=0
  fi
  added50=$(awk -v p="$p50" -v d="$direct50" 'BEGIN {printf "%.2f", p - d}')
  added99=$(awk -v p="$p99" -v d="$direct99" 'BEGIN {printf "%.2f", p - d}')
  cpu_us=$(awk -v t="$ticks" -v hz="$ticks_per_s" -v n="$requests" 'BEGIN {printf "%.0f", (n > 0) ? 1e6 * t / hz / n : 0}')
  local shown_latency=$latency
  (( jitter > 0 )) && shown_latency="$latency + U(0,$jitter)"
  if [[ -n $trace_label ]]; then
    trace_rows+=("| $trace_label | $shown_latency | $rps | $efficiency | $p50 | $p99 | $added50 | $added99 | $cpu_us | $(trace_exports) |")
  elif [[ -n $in_quota ]]; then
    local throttled_share # periods in which the quota ran out, of all periods with work
    throttled_share=$(awk -v b="$before_throttled" -v a="$after_throttled" 'BEGIN {split(b, x); split(a, y); p = y[1] - x[1]; printf "%.0f%%", (p > 0) ? 100 * (y[2] - x[2]) / p : 0}')
    quota_rows+=("| $c | $shown_latency | $rps | $bound | $efficiency | $p50 | $p99 | $added50 | $added99 | $cpu_us | $throttled_share | $non2xx |")
  else
    rows+=("| $c | $shown_latency | $rps | $bound | $efficiency | $p50 | $p99 | $direct50 | $direct99 | $added50 | $added99 | $cpu_us | $(mib "$load_rss") | $non2xx | $(( after_chat - before_chat )) |")
  fi
  echo "phase c=$c latency=${latency}ms: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, errors: $errors" >&2
}

phase 1 $LATENCY_MS
phase 16 $LATENCY_MS
phase 64 $LATENCY_MS
phase 256 $LATENCY_MS
# Real upstream latency varies: with jitter the clients stop moving in lockstep.
phase 64 $LATENCY_MS 20
phase 16 0

# A flood of image requests (each answer ~2.8 MB of base64): the concurrency limit
# sheds the excess with 503 instead of letting memory grow.
( peak=0; while kill -0 "$service" 2>/dev/null; do r=$(rss_kib); (( r > peak )) && peak=$r && echo "$peak" > "$work/image_rss"; sleep 0.1; done ) &
image_sampler=$!
wrk -t2 -c32 -d"${PHASE_SECONDS}s" -s bench/image.lua "http://127.0.0.1:$port/generate/image" > "$work/image.txt"
kill "$image_sampler" 2>/dev/null || true; wait "$image_sampler" 2>/dev/null || true
image_requests=$(awk '/requests in/ {print $1}' "$work/image.txt")
image_shed=$(awk '/Non-2xx/ {print $NF}' "$work/image.txt"); image_shed=${image_shed:-0}
image_rss=$(cat "$work/image_rss" 2>/dev/null || echo 0)
echo "image flood c=32: $image_requests requests, $image_shed shed, RSS peak $(mib "$image_rss") MiB" >&2

peak_rss=$(hwm_kib)
token_requests=$(( $(token_requests) - tokens_before ))
per_thousand=$(awk -v t="$token_requests" -v c="$service_calls" 'BEGIN {printf "%.4f", 1000 * t / c}')
main_idle_rss=$idle_rss
main_idle_threads=$idle_threads

# --- Tracing: spans exported to a local collector, versus off ---------------------
# The jittered c=64 phase on two processes side by side, one without an OTLP endpoint
# and one exporting every request's spans over OTLP/HTTP (protobuf) to the mock's
# /v1/traces with the SDK's default batching; three rounds, alternating, so the
# machine's load falls alike on both, and the medians compared.
off_service=$service off_port=$port
on_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
traced_cmd=()
for word in "${service_cmd[@]}"; do
  case $word in
    "PORT=$port") traced_cmd+=("PORT=$on_port") ;;
    "$bin") traced_cmd+=(OTEL_EXPORTER_OTLP_ENDPOINT="$mock_url" "$bin") ;;
    *) traced_cmd+=("$word") ;;
  esac
done
trace_tokens_before=$(token_requests)
"${traced_cmd[@]}" > "$work/traced.log" 2>&1 &
on_service=$!
pids+=("$on_service")
wait_healthy "$on_service" "$on_port" "$work/traced.log"
service=$on_service port=$on_port
idle_after_token "$trace_tokens_before"
traced_idle_rss=$idle_rss
curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{"name":"warm","tags":[]}' "http://127.0.0.1:$port/generate/description"
for round in 1 2 3; do
  service=$off_service port=$off_port trace_label="off (round $round)"
  phase 64 $LATENCY_MS 20
  service=$on_service port=$on_port trace_label="on (round $round)"
  phase 64 $LATENCY_MS 20
done
trace_label=
sleep 6 # one more batch (5 s by default) so the last spans are counted
trace_exported=$(trace_exports)
kill "$on_service"; wait "$on_service" 2>/dev/null || true
service=$off_service port=$off_port
# Medians of CPU per request and added p99, off and on, from the rows' columns 10 and 9.
trace_median() { # off|on column
  printf '%s\n' "${trace_rows[@]}" | awk -F'|' -v want="$1" -v col="$2" '$2 ~ want {gsub(/ /, "", $col); print $col}' | median
}
cpu_off=$(trace_median off 10) cpu_on=$(trace_median on 10)
p99_off=$(trace_median off 9) p99_on=$(trace_median on 9)
cpu_more=$(awk -v a="$cpu_off" -v b="$cpu_on" 'BEGIN {printf "%+.1f%%", 100 * (b - a) / a}')

# --- Inside a 50 millicore CPU quota --------------------------------------------
# The seed's deployment limits the pod to `cpu: 50m`: the kernel lets it run 5 ms of
# CPU per 100 ms period and stops it for the rest. The service starts inside the
# cgroup, so it sizes its runtime to the quota as it would in the pod.
make_cgroup() { # sets $cgroup; fails without root or a writable cgroup file system
  local name=ai-service-bench-$$ root
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then # cgroup v2
    root=/sys/fs/cgroup
    { grep -qw cpu "$root/cgroup.subtree_control" || echo +cpu > "$root/cgroup.subtree_control"; } &&
      mkdir "$root/$name" && cgroup=$root/$name &&
      echo "$QUOTA_US $PERIOD_US" > "$cgroup/cpu.max"
  else # cgroup v1: the cpu controller's hierarchy
    root=$(awk '$3 == "cgroup" && $4 ~ /(^|,)cpu(,|$)/ {print $2; exit}' /proc/mounts)
    [[ -n $root ]] && mkdir "$root/$name" && cgroup=$root/$name &&
      echo "$PERIOD_US" > "$cgroup/cpu.cfs_period_us" && echo "$QUOTA_US" > "$cgroup/cpu.cfs_quota_us"
  fi
}
quota_note=
if make_cgroup 2> "$work/cgroup.err"; then
  kill "$service"; wait "$service" 2>/dev/null || true
  python3 bench/startup.py "$STARTUP_RUNS" "$port" "$work/startup.log" "$cgroup/cgroup.procs" -- "${service_cmd[@]}" > "$work/quota_startup.txt"
  quota_startup_median=$(median < "$work/quota_startup.txt")
  quota_startup_range=$(range < "$work/quota_startup.txt")
  quota_tokens_before=$(token_requests)
  # shellcheck disable=SC2016 # $$ and $1 belong to the inner shell
  sh -c 'echo $$ > "$1" && shift && exec "$@"' sh "$cgroup/cgroup.procs" "${service_cmd[@]}" > "$work/quota.log" 2>&1 &
  service=$!
  pids+=("$service")
  wait_healthy "$service" "$port" "$work/quota.log"
  idle_after_token "$quota_tokens_before"
  quota_idle_rss=$idle_rss
  quota_idle_threads=$idle_threads
  curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{"name":"warm","tags":[]}' "http://127.0.0.1:$port/generate/description"
  in_quota=1
  phase 16 $LATENCY_MS
  phase 64 $LATENCY_MS
  in_quota=
else
  quota_note="No quota rows: this user cannot make a cgroup with a CPU quota ($(head -c 200 "$work/cgroup.err")); run as root to get them."
  echo "$quota_note" >&2
fi

{
  echo "## Benchmark ($(date -u +%Y-%m-%d), $(nproc) cores, \`make bench\`)"
  echo
  echo "The static binary (${BENCH_BIN:-profile $PROFILE}, as in the image) against a mock Azure OpenAI + Entra token endpoint over HTTPS on loopback (workload identity, one-hour tokens), wrk, ${PHASE_SECONDS} s per phase after a 2 s warm-up at the same concurrency. \"Upstream alone\" is wrk straight at the mock at the same concurrency; \"added\" is the service's latency minus that."
  echo
  echo "| concurrency | upstream latency (ms) | requests/s | bound c/latency | of bound | p50 (ms) | p99 (ms) | upstream alone p50 (ms) | upstream alone p99 (ms) | added p50 (ms) | added p99 (ms) | CPU µs/request | RSS under load (MiB) | non-2xx | upstream calls |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "| measure | value |"
  echo "|---|---|"
  echo "| startup to first 200 on /health, median of $STARTUP_RUNS (range) | ${startup_median} ms (${startup_range}) |"
  echo "| idle RSS, 2 s after the first token | $(mib "$main_idle_rss") MiB ($main_idle_threads threads) |"
  echo "| RSS under load (max sampled) | $(mib "$max_load_rss") MiB |"
  echo "| peak RSS (VmHWM) | $(mib "$peak_rss") MiB |"
  echo "| image flood, 32 clients for ${PHASE_SECONDS} s, 1 s upstream, ~2.8 MB answers | $(( image_requests - image_shed )) answered 200, $image_shed shed with 503; RSS peak $(mib "$image_rss") MiB |"
  echo "| token requests / service requests to the upstream | $token_requests / $service_calls |"
  echo "| token requests per 1,000 requests | $per_thousand |"
  echo "| static binary size (${BENCH_BIN:-profile $PROFILE}) | $(( $(stat -c %s "$bin") / 1024 )) KiB |"
  echo
  echo "### Tracing exported versus off"
  echo
  echo "The jittered phase at concurrency 64 on two processes of the same binary side by side, alternating: *off* has no OTLP endpoint; *on* exports every request's spans (the server span and the client span of the model call) to a local OTLP/HTTP collector with the default batch settings. The last column is the collector's count of exports so far ($trace_exported in all after the last batch). Medians of the three rounds: CPU per request ${cpu_off} µs off, ${cpu_on} µs on (${cpu_more}); added p99 ${p99_off} ms off, ${p99_on} ms on. Idle RSS of the exporting process: $(mib "$traced_idle_rss") MiB."
  echo
  echo "| tracing | upstream latency (ms) | requests/s | of bound | p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) | CPU µs/request | exports received |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${trace_rows[@]}"
  echo
  echo "### Inside a 50 millicore CPU quota"
  echo
  if [[ -n $quota_note ]]; then
    echo "$quota_note"
  else
    echo "The same binary started inside a cgroup limited to ${QUOTA_US} µs of CPU per ${PERIOD_US} µs (Kubernetes \`limits: cpu: 50m\`). A request that needs more CPU than the quota has left waits for the next period, so reaching the bound c/latency at concurrency 64 needs under $(( QUOTA_US * LATENCY_MS * 1000 / (PERIOD_US * 64) )) µs of CPU per request. \"Throttled periods\" is the share of periods in which the service ran out of quota."
    echo
    echo "| concurrency | upstream latency (ms) | requests/s | bound c/latency | of bound | p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) | CPU µs/request | throttled periods | non-2xx |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${quota_rows[@]}"
    echo
    echo "| measure | value |"
    echo "|---|---|"
    echo "| startup to first 200 on /health, median of $STARTUP_RUNS (range) | ${quota_startup_median} ms (${quota_startup_range}) |"
    echo "| idle RSS, 2 s after the first token | $(mib "$quota_idle_rss") MiB ($quota_idle_threads threads) |"
  fi
} > "$RESULTS/bench.md"
cat "$RESULTS/bench.md"

# Model routing: the cost of failing over from a deployment that answers 429 to everything.
AI_SERVICE_BIN="$bin" MOCK_BIN="$mock" bash bench/failover.sh
