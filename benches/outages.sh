#!/usr/bin/env bash
# Outages longer than every timeout: the broker gone, the dead-letter
# topic's broker gone, then S3 gone, for SECONDS each (default 360, past
# librdkafka's default five-minute message timeout), while the engine runs.
# CI runs the same three tests with outages of 3 s (broker), 10 s (letters'
# broker) and 60 s (S3), the last two already past the retry budget they
# configure.
#
#   bash benches/outages.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
bash .ci/tools
for test in kafka::the_engine_rides_out_a_broker_restart \
    faults::a_dead_letter_broker_gone_past_the_retry_budget_pauses_its_partitions_until_it_is_back \
    delivery::an_s3_outage_pauses_consumption_and_the_run_completes_exactly_once; do
    TRIBUTARY_OUTAGE_SECONDS="${1:-360}" \
        cargo test --locked -p tributary-engine --test it -- --exact "$test" --nocapture
done
