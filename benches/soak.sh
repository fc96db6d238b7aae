#!/usr/bin/env bash
# The long-uptime soak: the Kafka pipeline with a commit every 50 ms per
# partition under a steady trickle of records (about 1,000 a second) for
# MINUTES (default 60), sampling the engine's heap (tributary_heap_bytes)
# and resident memory ten times a second after a 20-second warm-up; fails
# if the floor of either rises per commit (the heap by 256 bytes, RSS by a
# KiB) (tests/it/faults.rs, memory_does_not_grow_with_commits, ignored in
# CI, which runs the_heap_does_not_grow_per_commit, 75 s, instead).
#
#   bash benches/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
bash .ci/tools
TRIBUTARY_SOAK_SECONDS=$(( ${1:-60} * 60 )) \
    cargo test --release --locked -p tributary-engine --test it -- --ignored --exact faults::memory_does_not_grow_with_commits --nocapture
