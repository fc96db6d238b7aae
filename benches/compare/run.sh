#!/usr/bin/env bash
# Side-by-side: the orders pipeline in Tributary, DuckDB and Polars on the
# same input, with the read-the-file and parse-only references, in one run.
#
#   bash benches/compare/run.sh [EVENTS] [extra compare.py args]
#
# Builds the release binaries, installs DuckDB and Polars (pinned) into a
# venv under ~/.cache/tributary, generates the input once per size, prints
# one table. Inputs and outputs live in $COMPARE_DIR (/tmp/tributary-compare).
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS="${1:-1000000}"
shift || true
DUCKDB_VERSION=2.0.1
POLARS_VERSION=2.1.0
VENV="${COMPARE_VENV:-$HOME/.cache/tributary/compare-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"

if ! "$VENV/bin/python" -c "import duckdb, polars; assert duckdb.__version__ == '$DUCKDB_VERSION' and polars.__version__ == '$POLARS_VERSION'" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "duckdb==$DUCKDB_VERSION" "polars==$POLARS_VERSION"
fi
cargo build --release --locked -p tributary-engine -p tributary-benches
exec "$VENV/bin/python" benches/compare/compare.py --events "$EVENTS" \
    --dir "${COMPARE_DIR:-/tmp/tributary-compare}" \
    --tributary "$CARGO_TARGET_DIR/release/tributary" \
    --bench "$CARGO_TARGET_DIR/release/tributary-bench" "$@"
