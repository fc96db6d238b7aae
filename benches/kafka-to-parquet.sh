#!/usr/bin/env bash
# End-to-end Kafka → Parquet throughput of the orders pipeline.
#
#   bash benches/kafka-to-parquet.sh [EVENTS] [PARTITIONS]
#
# Starts a tansu broker (memory storage) on a free port, publishes EVENTS
# generated order events (2 % invalid) to a topic with PARTITIONS partitions,
# then runs pipelines/orders-kafka.yaml (release build) until the topic is
# drained and prints its summary. The figure to read is "records/s"; the wall
# time includes joining the group and the final 3 s of idleness that ends the
# run, which the script subtracts for the "processing" figure.
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${1:-1000000}"
PARTITIONS="${2:-6}"
TOOLS="${TRIBUTARY_TOOLS:-$HOME/.cache/tributary/tools}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"

bash .ci/tools
cargo build --release --locked -p tributary-engine
BIN="$CARGO_TARGET_DIR/release/tributary"

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$TOOLS/bin/tansu" broker --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    >"$WORK/tansu.log" 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

# One record per batch: tansu 0.6 answers a fetch from inside a batch with the
# next batch, which would drop records whenever a partition is paused and resumed.
"$BIN" generate --events "$EVENTS" --to-kafka "127.0.0.1:$PORT" --topic orders \
    --partitions "$PARTITIONS" --customers "$WORK/customers.csv" \
    ${ONE_RECORD_BATCHES:+--kafka-property batch.num.messages=1}

KAFKA_BROKERS="127.0.0.1:$PORT" ORDERS_TOPIC=orders TRIBUTARY_GROUP=bench \
TRIBUTARY_OUT="$WORK/out" TRIBUTARY_CUSTOMERS="$WORK/customers.csv" \
    /usr/bin/time -f "peak RSS %M KiB" \
    "$BIN" run pipelines/orders-kafka.yaml --until-idle 3s --summary-json "$WORK/summary.json"

python3 - "$WORK/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
secs = s["elapsed"]["secs"] + s["elapsed"]["nanos"] / 1e9
n = s["totals"]["records_in"]
print(f"records in: {n}, wall {secs:.2f} s; processing (wall - 3 s idle tail): {n / max(secs - 3, 1e-9):,.0f} records/s")
PY
