"""Runs the orders pipeline side by side — Tributary, DuckDB, Polars — on
the same input file, next to two references (reading the file, and parsing
it into Arrow with arrow-json alone), checks that every engine routed the
same number of records to output, DLQ and review, and prints one table.

Each run is a child process measured by the kernel (os.wait4): wall time,
peak RSS, CPU seconds. Called by run.sh, which builds and installs things.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def measure(cmd, env=None, stdout=subprocess.PIPE):
    started = time.monotonic()
    child = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=stdout)
    out = child.stdout.read() if stdout == subprocess.PIPE else b""
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed with {child.returncode}")
    return {
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "stdout": out.decode(),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--dir", default="/tmp/tributary-compare")
    p.add_argument("--tributary", required=True)
    p.add_argument("--bench", required=True)
    p.add_argument("--skip", default="", help="comma-separated engines not to run (duckdb, polars)")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    os.makedirs(args.dir, exist_ok=True)
    source = os.path.join(args.dir, f"orders-{args.events}.ndjson")
    clean = os.path.join(args.dir, f"orders-{args.events}-clean.ndjson")
    customers = os.path.join(args.dir, "customers.csv")
    for path, ratio in [(source, "0.02"), (clean, "0")]:
        if not os.path.exists(path):
            subprocess.run([args.tributary, "generate", "--events", str(args.events), "--invalid-ratio", ratio,
                            "--seed", "42", "--out", path, "--customers", customers], check=True)
    size = os.path.getsize(source)
    print(f"input: {args.events:,} orders events, {size / 1e6:.0f} MB, 2 % invalid; {os.cpu_count()} cores", flush=True)

    rows, counts = [], {}

    def out_dir(name):
        d = os.path.join(args.dir, "out", name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def tributary(name, path):
        d = out_dir(name)
        summary = os.path.join(d, "summary.json")
        m = measure([args.tributary, "run", os.path.join(ROOT, "pipelines/orders.yaml"), "--summary-json", summary],
                    env={"TRIBUTARY_INPUT": path, "TRIBUTARY_CUSTOMERS": customers, "TRIBUTARY_OUT": d,
                         "RUST_LOG": "warn"})
        totals = json.load(open(summary))["totals"]
        return m, {"out": totals["records_out"], "dlq": totals["dlq"], "review": totals["review"]}

    m = measure(["cat", source], stdout=subprocess.DEVNULL)
    rows.append(("read the file (cat > /dev/null)", m))
    for threads in (1, os.cpu_count() or 1):
        m = measure([args.bench, "parse", clean, "--threads", str(threads)])
        rows.append((f"parse only, arrow-json, {threads} thread{'s' if threads > 1 else ''} (clean input)", m))
    m, c = tributary("tributary-clean", clean)
    rows.append(("Tributary, clean input", m))
    m, counts["Tributary"] = tributary("tributary", source)
    rows.append(("Tributary", m))
    python = sys.executable
    for engine in ("duckdb", "polars"):
        if engine in skip:
            continue
        d = out_dir(engine)
        m = measure([python, os.path.join(HERE, f"orders_{engine}.py"), source, customers, d])
        name = {"duckdb": "DuckDB", "polars": "Polars"}[engine]
        counts[name] = json.loads(m["stdout"].strip().splitlines()[-1])
        rows.append((name, m))

    import duckdb
    import polars
    print(f"versions: duckdb {duckdb.__version__}, polars {polars.__version__}, "
          f"{subprocess.run([args.tributary, '--version'], capture_output=True, text=True).stdout.strip()}")
    reference = dict(rows)["Tributary"]["wall_s"]
    print()
    print("| run | wall s | events/s | MB/s | peak RSS MiB | CPU s | wall ÷ Tributary's |")
    print("|---|---|---|---|---|---|---|")
    for name, m in rows:
        rate = args.events / m["wall_s"]
        print(f"| {name} | {m['wall_s']:.2f} | {rate:,.0f} | {size / 1e6 / m['wall_s']:.0f} | "
              f"{m['peak_rss_mib']:,.0f} | {m['cpu_s']:.2f} | {m['wall_s'] / reference:.2f} |")
    print()
    for name, c in counts.items():
        print(f"{name}: out {c['out']:,}, dlq {c['dlq']:,}, review {c['review']:,}")
    distinct = {json.dumps(c, sort_keys=True) for c in counts.values()}
    if len(distinct) != 1:
        sys.exit("the engines disagree on where the records went (see the counts above)")
    print("all engines agree on the counts")


if __name__ == "__main__":
    main()
