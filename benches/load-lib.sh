# Shared by the services' load scripts (sourced): oha installed into the
# tools cache once, and a Markdown row from oha's JSON report.
TOOLS="${TRIBUTARY_TOOLS:-$HOME/.cache/tributary/tools}"
OHA_VERSION=1.16.0
if [ ! -x "$TOOLS/bin/oha" ]; then
    CARGO_TARGET_DIR="$TOOLS/oha-target" cargo install oha --version "$OHA_VERSION" --locked --root "$TOOLS"
    rm -rf "$TOOLS/oha-target"
fi
OHA="$TOOLS/bin/oha"

report() { # name rate json
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
name, rate, path = sys.argv[1:]
r = json.load(open(path))
p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
kinds = {f"HTTP {k}": v for k, v in codes.items() if not k.startswith("2")}
kinds.update(r.get("errorDistribution", {}))
errors = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) or "0"
ms = lambda k: f"{p[k] * 1000:.2f}" if p.get(k) is not None else "-"
print(f"| {name} | {rate}/s | {r['summary']['requestsPerSec']:.0f}/s | {ms('p50')} | {ms('p95')} | {ms('p99')} | {ms('p99.9')} | {ok} | {errors} |")
PY
}
