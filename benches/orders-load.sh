#!/usr/bin/env bash
# Open-loop load on the orders service over HTTP, corrected for coordinated
# omission (benches/services/orders_load.rs: each request is sent when it
# is due, its latency counted from then), each step reporting the achieved
# rate, p50/p95/p99/p99.9 and errors; then the outbox's publish delay.
#
#   bash benches/orders-load.sh   # reads at 1,000, 2,000, 4,000/s; orders at 200, 300, 400, 500/s
#
# The whole path runs on this machine, release builds: the auth service
# (the token), the orders service with its saga and outbox relay, the
# stand-in payment provider, a tansu broker (memory), the machine's
# PostgreSQL and Redis (bash .ci/services starts them). Its own databases
# (…_bench, dropped first) and Redis prefixes.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${TRIBUTARY_TOOLS:-$HOME/.cache/tributary/tools}"
[ -x "$TOOLS/bin/tansu" ] || bash .ci/tools
DURATION="${DURATION:-20}"
READ_RATES="${READ_RATES:-1000 2000 4000}"
CREATE_RATES="${CREATE_RATES:-200 300 400 500}"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
cargo build --release --locked -p tributary-auth -p tributary-orders \
    -p tributary-payment-provider -p tributary-service-benches
BIN="$CARGO_TARGET_DIR/release"

for db in tributary_auth_bench tributary_orders_bench; do
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
export RUST_LOG=warn

"$TOOLS/bin/tansu" broker --storage-engine memory://tansu/ --listener-url tcp://127.0.0.1:19092 \
    --advertised-listener-url tcp://127.0.0.1:19092 >"$work/tansu.log" 2>&1 &
"$BIN/tributary-payment-provider" --listen 127.0.0.1:18090 >"$work/provider.log" 2>&1 &
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/19092) 2>/dev/null && break; sleep 0.2; done
for topic in orders payments cache-invalidations external-api-calls; do
    "$TOOLS/bin/tansu" topic create "$topic" --broker tcp://127.0.0.1:19092 --partitions 3 >/dev/null
done

A=http://127.0.0.1:18081
DATABASE_URL=postgres://postgres@127.0.0.1:5432/tributary_auth_bench \
TRIBUTARY_AUTH_DATA_KEYS="$("$BIN/tributary-auth" data-key)" \
TRIBUTARY_AUTH_REDIS_PREFIX="bench:$$:auth:" TRIBUTARY_AUTH_LISTEN=127.0.0.1:18081 \
TRIBUTARY_AUTH_ISSUER=$A \
    "$BIN/tributary-auth" serve >"$work/auth.log" 2>&1 &
for _ in $(seq 1 100); do curl -sf "$A/readyz" >/dev/null && break; sleep 0.2; done
J='content-type: application/json'
curl -sf "$A/auth/users" -H "$J" -d '{"email":"load@example.com","password":"correct horse battery"}' -o /dev/null
DATABASE_URL=postgres://postgres@127.0.0.1:5432/tributary_auth_bench \
    "$BIN/tributary-auth" access load@example.com --roles admin,customer --permissions read:orders,write:orders >/dev/null
TOKEN=$(curl -sf "$A/auth/login" -H "$J" -d '{"email":"load@example.com","password":"correct horse battery"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

O=http://127.0.0.1:18082
DATABASE_URL=postgres://postgres@127.0.0.1:5432/tributary_orders_bench \
TRIBUTARY_ORDERS_REDIS_PREFIX="bench:$$:orders:" TRIBUTARY_ORDERS_LISTEN=127.0.0.1:18082 \
TRIBUTARY_JWKS_URL=$A/.well-known/jwks.json TRIBUTARY_ORDERS_AUTH__ISSUER=$A \
PAYMENT_PROVIDER_URL=http://127.0.0.1:18090 KAFKA_BROKERS=127.0.0.1:19092 \
TRIBUTARY_ORDERS_DATABASE_CONNECTIONS="${CONNECTIONS:-32}" \
TRIBUTARY_ORDERS_PRICING__RULES_FILE=services/orders/config/pricing.yaml \
    "$BIN/tributary-orders" serve >"$work/orders.log" 2>&1 &
for _ in $(seq 1 100); do curl -sf "$O/readyz" >/dev/null && break; sleep 0.2; done
for n in $(seq 0 63); do
    curl -sf "$O/api/v1/products" -H "$J" -H "authorization: Bearer $TOKEN" \
        -H "idempotency-key: product-$n" \
        -d "{\"sku\":\"SKU-$((90000 + n))\",\"name\":\"Load $n\",\"stock\":100000000,\"prices\":{\"USD\":1999}}" -o /dev/null
done

LOAD="$BIN/orders-load"
echo "| what | offered | achieved | p50 ms | p95 ms | p99 ms | p99.9 ms | 2xx | errors |"
echo "|---|---|---|---|---|---|---|---|---|"
"$LOAD" --base "$O" --token "$TOKEN" --mode seed --count 5000 --ids-file "$work/ids"
sleep 5 # the seeded orders' sagas and events settle
for rate in $READ_RATES; do
    "$LOAD" --base "$O" --token "$TOKEN" --mode read --rate "$rate" --seconds "$DURATION" --ids-file "$work/ids"
done
for rate in $CREATE_RATES; do
    "$LOAD" --base "$O" --token "$TOKEN" --mode create --rate "$rate" --seconds "$DURATION"
    sleep 5
done

# The outbox: time from an event's commit to Kafka's acknowledgement, over
# every event of the run (the relay's histogram); the cache: time from a
# write to this instance dropping its copy on the CacheInvalidated event,
# read back from Kafka (the follower's histogram).
curl -sf "$O/metrics" | python3 -c '
import re, sys
text = sys.stdin.read()
for name, what in [("outbox_delivery_delay_seconds", "outbox publish delay"),
                   ("cache_invalidation_delay_seconds", "cache invalidation delay")]:
    buckets = []
    for m in re.finditer(r"tributary_orders_" + name + r"_bucket\{[^}]*le=\"([^\"]+)\"[^}]*\} (\S+)", text):
        buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    total = buckets[-1][1] if buckets else 0
    def q(p):
        for le, count in buckets:
            if count >= p * total:
                return le
    print(f"{what} over {total:.0f} events: p50 <= {q(0.5)} s, p99 <= {q(0.99)} s, p99.9 <= {q(0.999)} s")
'
