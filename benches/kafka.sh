#!/usr/bin/env bash
# Kafka benchmarks against a local tansu broker (memory storage) that this
# script starts on a free port and stops at the end.
#
#   bash benches/kafka.sh throughput [EVENTS] [PARTITIONS]
#       publishes EVENTS orders events (2 % invalid), then reads the topic
#       with a bare rdkafka consumer (the broker's ceiling for a consumer
#       on this machine) and with pipelines/orders-kafka.yaml; prints both
#       rates, the ratio, peak RSS and CPU seconds.
#   bash benches/kafka.sh latency [RATE] [SECONDS]
#       publishes at a steady RATE events/s for SECONDS and reports event →
#       visible-in-Parquet percentiles (5 s roll, 5 s commits).
#
# Set ONE_RECORD_BATCHES=1 to publish one record per produce batch (tansu 0.6
# answers a fetch from inside a batch with the next batch, which drops
# records whenever a partition is paused and resumed).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${1:-throughput}"
TOOLS="${TRIBUTARY_TOOLS:-$HOME/.cache/tributary/tools}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"

bash .ci/tools
cargo build --release --locked -p tributary-engine -p tributary-benches
BENCH="$CARGO_TARGET_DIR/release/tributary-bench"

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$TOOLS/bin/tansu" broker --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    >"$WORK/tansu.log" 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

case "$MODE" in
throughput)
    "$BENCH" kafka --brokers "127.0.0.1:$PORT" --events "${2:-1000000}" --partitions "${3:-6}" \
        --dir "$WORK" ${ONE_RECORD_BATCHES:+--one-record-batches}
    ;;
latency)
    "$BENCH" latency --brokers "127.0.0.1:$PORT" --rate "${2:-100000}" --seconds "${3:-60}" \
        --dir "$WORK/latency"
    ;;
*)
    echo "usage: $0 throughput [EVENTS] [PARTITIONS] | latency [RATE] [SECONDS]" >&2
    exit 2
    ;;
esac
