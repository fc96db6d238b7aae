#!/usr/bin/env bash
# Open-loop load on the auth service over HTTP: fixed request rates with
# coordinated-omission correction (oha -q RATE --latency-correction), each
# step reporting p50/p95/p99/p99.9 and errors.
#
#   bash benches/auth-load.sh   # logins at 4, 8, 12/s; /auth/me at 1,000, 2,000, 4,000/s;
#                               # refreshes at 1,000, 2,500, 5,000/s while logins saturate the hash pool
#
# Needs the machine's PostgreSQL and Redis (bash .ci/services starts them).
# Uses its own database (tributary_auth_bench, dropped first) and Redis
# prefix; attempt limits are raised so the load is not refused as an attack.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/load-lib.sh
DURATION="${DURATION:-20s}"
LOGIN_RATES="${LOGIN_RATES:-4 8 12}"
ME_RATES="${ME_RATES:-1000 2000 4000}"
REFRESH_RATES="${REFRESH_RATES:-1000 2500 5000}"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
cargo build --release --locked -p tributary-auth -p tributary-service-benches
AUTH="$CARGO_TARGET_DIR/release/tributary-auth"
REFRESH_LOAD="$CARGO_TARGET_DIR/release/refresh-load"

psql -q -h 127.0.0.1 -U postgres -d postgres -c 'DROP DATABASE IF EXISTS tributary_auth_bench WITH (FORCE)'
work=$(mktemp -d)
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/tributary_auth_bench
export TRIBUTARY_AUTH_DATA_KEYS="$("$AUTH" data-key)"
export TRIBUTARY_AUTH_REDIS_PREFIX="bench:$$:"
export TRIBUTARY_AUTH_LISTEN=127.0.0.1:18081
export TRIBUTARY_AUTH_LOCKOUT__ATTEMPTS_PER_ACCOUNT=1000000000
export TRIBUTARY_AUTH_LOCKOUT__ATTEMPTS_PER_ADDRESS=1000000000
export RUST_LOG=warn
"$AUTH" serve >"$work/auth.log" 2>&1 &
AUTH_PID=$!
# Whatever way the script ends, its load generators and the server go too.
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
A=http://127.0.0.1:18081
for _ in $(seq 1 100); do curl -sf "$A/readyz" >/dev/null && break; sleep 0.2; done

J='content-type: application/json'
# Logins spread over 50 accounts (a line each, oha picks one per request):
# one account admits at most `lockout.max_failures` checks at once.
for i in $(seq 1 50); do
    echo "{\"email\":\"load$i@example.com\",\"password\":\"correct horse battery\"}" >>"$work/logins"
done
xargs -d '\n' -P 2 -I{} curl -sf "$A/auth/users" -H "$J" -d {} -o /dev/null <"$work/logins"
BODY=$(head -1 "$work/logins")
ACCESS=$(curl -sf "$A/auth/login" -H "$J" -d "$BODY" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')


echo "| what | offered | achieved | p50 ms | p95 ms | p99 ms | p99.9 ms | 2xx | errors |"
echo "|---|---|---|---|---|---|---|---|---|"
for rate in $LOGIN_RATES; do
    "$OHA" -z "$DURATION" -q "$rate" --latency-correction --no-tui --output-format json -o "$work/login.json" \
        -m POST -H "$J" -Z "$work/logins" "$A/auth/login"
    report "POST /auth/login (bcrypt 12)" "$rate" "$work/login.json"
done
for rate in $ME_RATES; do
    "$OHA" -z "$DURATION" -q "$rate" --latency-correction --no-tui --output-format json -o "$work/me.json" \
        -H "authorization: Bearer $ACCESS" "$A/auth/me"
    report "GET /auth/me (verify + one row)" "$rate" "$work/me.json"
done
for rate in $REFRESH_RATES; do
    rm -f "$work/ready"
    "$REFRESH_LOAD" --base "$A" --rate "$rate" --seconds "${DURATION%s}" --sessions 200 \
        --accounts-file "$work/logins" --ready-file "$work/ready" --wait 3 &
    LOAD=$!
    while [ ! -e "$work/ready" ]; do
        kill -0 "$LOAD" 2>/dev/null || break
        sleep 0.2
    done
    # Logins at 12/s (over the hash pool's capacity) all along the refreshes.
    "$OHA" -z 300s -q 12 --latency-correction --no-tui --output-format quiet \
        -m POST -H "$J" -Z "$work/logins" "$A/auth/login" &
    SATURATE=$!
    wait "$LOAD"
    kill "$SATURATE" 2>/dev/null || true
    wait "$SATURATE" 2>/dev/null || true
done
