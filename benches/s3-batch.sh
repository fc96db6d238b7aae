#!/usr/bin/env bash
# Batch mode over S3: N generated orders events split into F zstd-compressed
# NDJSON objects in a local moto S3 server, run through pipelines/orders.yaml
# with the source set to an s3:// glob. Prints the engine's summary and
# /usr/bin/time's peak RSS and CPU.
#
#   bash benches/s3-batch.sh [EVENTS] [FILES]      (default 1000000 20)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${1:-1000000}"
FILES="${2:-20}"
TOOLS="${TRIBUTARY_TOOLS:-$HOME/.cache/tributary/tools}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
bash .ci/tools
cargo build --release -p tributary-engine --quiet
BIN="$CARGO_TARGET_DIR/release/tributary"
WORK="$(mktemp -d)"
PORT=$((20000 + RANDOM % 20000))
"$TOOLS/venv/bin/moto_server" -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null; rm -rf "$WORK"' EXIT
"$BIN" generate --events "$EVENTS" --out "$WORK/orders.ndjson" >/dev/null
sleep 2
"$TOOLS/venv/bin/python" - "$WORK" "$PORT" "$FILES" <<'PY'
import subprocess, sys, pathlib, boto3
work, port, files = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="x",
                  aws_secret_access_key="x", region_name="us-east-1")
s3.create_bucket(Bucket="raw")
lines = (work / "orders.ndjson").read_bytes().splitlines(keepends=True)
per = -(-len(lines) // files)
for i in range(files):
    body = subprocess.run(["zstd", "-3", "-q", "-c"], input=b"".join(lines[i * per:(i + 1) * per]),
                          capture_output=True, check=True).stdout
    s3.put_object(Bucket="raw", Key=f"orders/2026-11-{1 + i % 10:02d}/part-{i:03d}.ndjson.zst", Body=body)
PY
cat > "$WORK/storage.yaml" <<YAML
storage:
  s3:
    endpoint: http://127.0.0.1:$PORT
    region: us-east-1
    access_key_id: x
    secret_access_key: x
YAML
sed "s#\.\./schemas/#$PWD/schemas/#" pipelines/orders.yaml | cat - "$WORK/storage.yaml" > "$WORK/pipeline.yaml"
TRIBUTARY_INPUT="s3://raw/orders/2026-11-*/*.ndjson.zst" \
TRIBUTARY_CUSTOMERS="$WORK/customers.csv" TRIBUTARY_OUT="$WORK/out" \
    /usr/bin/time -v "$BIN" run "$WORK/pipeline.yaml" 2> "$WORK/time.txt"
grep -E "Maximum resident|Elapsed|User time|System time" "$WORK/time.txt"
