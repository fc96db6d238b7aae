#!/usr/bin/env bash
# The gateway against nginx, in one run on this machine: the same small
# fast upstream (bench-upstream, one thread) called directly, through nginx
# (Debian's, proxy_pass with keep-alive) and through tributary-gateway,
# first as a plain proxy, then with every check on (API key, user token,
# the distributed rate limit in Redis). Each at fixed open-loop rates with
# coordinated-omission correction (oha -q RATE --latency-correction), then
# peak throughput with wrk. Access logs off on both proxies.
# Then the same rates again with the cores split: each proxy alone on CPU 0
# (one worker), the upstream, Redis and the load generator on CPU 1; this
# tells what the proxy itself adds from what sharing a core with the load
# generator adds. (Redis's affinity is set for that part and put back.)
#
#   bash benches/gateway-load.sh    # RATES="5000 10000 20000" DURATION=20s PEAK=15s SPLIT=1
#
# Needs the machine's PostgreSQL and Redis (bash .ci/services starts them),
# nginx and wrk (apt-get install nginx-light wrk), oha (installed on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/load-lib.sh
RATES="${RATES:-5000 10000 20000}"
DURATION="${DURATION:-20s}"
PEAK="${PEAK:-15s}"
command -v nginx >/dev/null || { echo "nginx is missing: apt-get install nginx-light" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
cargo build --release --locked -p tributary-gateway -p tributary-service-benches
BIN="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"' EXIT
export RUST_LOG=warn

U=127.0.0.1:18500
"$BIN/bench-upstream" --listen $U >"$work/token" 2>"$work/upstream.log" &
UPSTREAM_PID=$!
for _ in $(seq 1 100); do curl -sf "http://$U/" >/dev/null && break; sleep 0.1; done
TOKEN=$(head -1 "$work/token")

cat >"$work/routes.yaml" <<ROUTES
upstreams:
  bench:
    addresses: ["$U"]
    retries: 0
routes:
  - name: plain
    prefix: /plain
    upstream: bench
    access: public
  - name: checked
    prefix: /checked
    upstream: bench
    permission: read:orders
ROUTES
psql -q -h 127.0.0.1 -U postgres -d postgres -c 'DROP DATABASE IF EXISTS tributary_gateway_bench WITH (FORCE)'
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/tributary_gateway_bench
export TRIBUTARY_GATEWAY_REDIS_PREFIX="bench:$$:gateway:"
export TRIBUTARY_JWKS_URL="http://$U/jwks" TRIBUTARY_GATEWAY_AUTH__ISSUER=bench
export TRIBUTARY_GATEWAY_ACCESS_LOG=false
KEY=$("$BIN/tributary-gateway" keys issue --name bench --limit-per-minute 1000000000 2>/dev/null)

# Starts nginx and the gateway, on the CPUs listed in $1 (all when empty):
# as many nginx workers as CPUs, and the gateway's default (one proxy
# worker per CPU it may run on).
start_proxies() {
    local cpus=${1:-0-$(($(nproc) - 1))}
    local workers
    workers=$(taskset -c "$cpus" nproc)
    cat >"$work/nginx.conf" <<NGINX
worker_processes $workers;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream bench { server $U; keepalive 256; }
    server {
        listen 127.0.0.1:18501 reuseport;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
    taskset -c "$cpus" nginx -c "$work/nginx.conf" -p "$work"
    taskset -c "$cpus" "$BIN/tributary-gateway" serve --routes "$work/routes.yaml" \
        --listen 127.0.0.1:18502 --admin-listen 127.0.0.1:18503 >"$work/gateway.log" 2>&1 &
    GATEWAY_PID=$!
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18503/readyz >/dev/null && break; sleep 0.2; done
    curl -sf http://127.0.0.1:18502/checked/x -H "x-api-key: $KEY" -H "authorization: Bearer $TOKEN" >/dev/null \
        || { echo "the checked route refused the benchmark's key or token" >&2; cat "$work/gateway.log" >&2; exit 1; }
}

stop_proxies() {
    kill "$(cat "$work/nginx.pid")" "$GATEWAY_PID"
    wait "$GATEWAY_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do [ -f "$work/nginx.pid" ] || break; sleep 0.1; done
}

# One table row per target and rate; $1 is what runs oha (a taskset or nothing).
open_loop() {
    echo "| target | offered | achieved | p50 ms | p95 ms | p99 ms | p99.9 ms | 2xx | errors |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for rate in $RATES; do
        for target in "direct|http://$U/item" "nginx|http://127.0.0.1:18501/item" \
            "gateway (plain proxy)|http://127.0.0.1:18502/plain/item" \
            "gateway (key + token + rate limit)|http://127.0.0.1:18502/checked/item"; do
            name=${target%%|*}; url=${target#*|}
            $1 "$OHA" -z "$DURATION" -q "$rate" -c 200 --latency-correction --no-tui --output-format json \
                -o "$work/run.json" -H "x-api-key: $KEY" -H "authorization: Bearer $TOKEN" "$url" >/dev/null
            report "$name" "$rate" "$work/run.json"
            sleep 2
        done
    done
}

start_proxies ""
echo "Machine: $(nproc) cores; upstream, proxies and load generators share them."
echo
open_loop ""

echo
echo "Peak throughput (wrk -t2 -c64 -d$PEAK, closed loop):"
echo
echo "| target | req/s | p50 ms | p99 ms | errors |"
echo "|---|---|---|---|---|"
for target in "direct|http://$U/item" "nginx|http://127.0.0.1:18501/item" \
    "gateway (plain proxy)|http://127.0.0.1:18502/plain/item" \
    "gateway (key + token + rate limit)|http://127.0.0.1:18502/checked/item"; do
    name=${target%%|*}; url=${target#*|}
    wrk -t2 -c64 -d"$PEAK" --latency -H "x-api-key: $KEY" -H "authorization: Bearer $TOKEN" "$url" >"$work/wrk.txt"
    python3 - "$name" "$work/wrk.txt" <<'PY'
import re, sys
name, path = sys.argv[1:]
text = open(path).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
def ms(label):
    m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", text)
    if not m: return "-"
    v, unit = float(m.group(1)), m.group(2)
    return f"{v / 1000 if unit == 'us' else v * 1000 if unit == 's' else v:.2f}"
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
err = (errors.group(1) if errors else "0") + (f" ({sock.group(1)})" if sock else "")
print(f"| {name} | {float(rps):.0f} | {ms('50')} | {ms('99')} | {err} |")
PY
    sleep 2
done

[ "${SPLIT:-1}" = 1 ] || exit 0
echo
echo "Split cores: each proxy alone on CPU 0 (one worker); the upstream, Redis and oha on CPU 1."
echo
stop_proxies
REDIS_PID=$(pgrep -x redis-server | head -1)
REDIS_CPUS=$(taskset -pc "$REDIS_PID" | sed 's/.*: //')
trap 'taskset -apc "$REDIS_CPUS" "$REDIS_PID" >/dev/null; kill $(jobs -p) 2>/dev/null; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"' EXIT
taskset -apc 1 "$REDIS_PID" >/dev/null
taskset -apc 1 "$UPSTREAM_PID" >/dev/null
start_proxies 0
open_loop "taskset -c 1"
