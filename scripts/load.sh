#!/usr/bin/env bash
# Load test of the example gateway, on loopback, with wrk.
#
# Starts the three services and the gateway (release build, external mode, --bench-routes),
# then drives four targets, interleaved, ROUNDS times each for DURATION seconds:
#   direct   GET inventory /catalog                (the downstream alone)
#   raw      GET gateway   /bench/raw/catalog      (the gateway, no layer)
#   timeout  GET gateway   /bench/timeout/catalog  (the same, inside tower's Timeout alone)
#   stack    GET gateway   /api/catalog            (the same work through the inventory's stack)
# Prints requests/s, p50 and p99 for each (median of the rounds) and the ratios of stack to
# raw, of timeout to raw (what having a timeout at all costs) and of stack to timeout.
# Servers are pinned to CPU 0 and wrk to CPU 1 when there are two CPUs (taskset).
#
#   scripts/load.sh                       # 3 rounds of 10 s, 32 connections
#   ROUNDS=5 DURATION=20 scripts/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
BASE_PORT=${BASE_PORT:-18180}

if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk"
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get install -y wrk >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null; }
fi

cargo build --quiet --release -p gateway
BIN=target/release/gateway

CPUS=$(nproc)
# Runs a command pinned to a CPU; `spawn` replaces its (background) shell with it, so that
# `$!` is the server itself and the cleanup reaches it.
spawn() {
  local cpu=$1
  shift
  if [ "$CPUS" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
    exec taskset -c "$cpu" "$@"
  else
    exec "$@"
  fi
}
pin() {
  local cpu=$1
  shift
  if [ "$CPUS" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
    taskset -c "$cpu" "$@"
  else
    "$@"
  fi
}

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

GW=$BASE_PORT
INV=$((BASE_PORT + 1))
ORD=$((BASE_PORT + 2))
PAY=$((BASE_PORT + 3))
spawn 0 "$BIN" inventory --listen "127.0.0.1:$INV" >"$WORK/inventory.log" 2>&1 & PIDS+=($!)
spawn 0 "$BIN" order --listen "127.0.0.1:$ORD" >"$WORK/order.log" 2>&1 & PIDS+=($!)
spawn 0 "$BIN" payment --listen "127.0.0.1:$PAY" >"$WORK/payment.log" 2>&1 & PIDS+=($!)
# A bulkhead as wide as the load, so that the comparison is of the path, not of rejections.
cat >"$WORK/gateway.toml" <<'EOF'
[inventory]
bulkhead = { max_concurrent = 1024 }
EOF
spawn 0 "$BIN" --listen "127.0.0.1:$GW" --config "$WORK/gateway.toml" --bench-routes \
  --order-url "http://127.0.0.1:$ORD" --payment-url "http://127.0.0.1:$PAY" \
  --inventory-url "http://127.0.0.1:$INV" >"$WORK/gateway.log" 2>&1 & PIDS+=($!)

ready=
for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$GW/health/live" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "the gateway did not start; its log:" >&2
  cat "$WORK/gateway.log" >&2
  exit 1
fi

declare -A URL=(
  [direct]="http://127.0.0.1:$INV/catalog"
  [raw]="http://127.0.0.1:$GW/bench/raw/catalog"
  [timeout]="http://127.0.0.1:$GW/bench/timeout/catalog"
  [stack]="http://127.0.0.1:$GW/api/catalog"
)
# A short warm-up of each target.
for t in direct raw timeout stack; do
  pin 1 wrk -t1 -c"$CONNECTIONS" -d2s "${URL[$t]}" >/dev/null
done

RESULTS="$WORK/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
  for t in direct raw timeout stack; do
    out=$(pin 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${URL[$t]}")
    if echo "$out" | grep -qE "Non-2xx|Socket errors"; then
      echo "$t: errors or non-2xx answers:" >&2
      echo "$out" >&2
      exit 1
    fi
    rps=$(echo "$out" | awk '/Requests\/sec:/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$t" "$rps" "$p50" "$p99" >>"$RESULTS"
    echo "round $round $t: $rps req/s, p50 $p50, p99 $p99"
  done
done

python3 - "$RESULTS" "$CPUS" "$CONNECTIONS" "$DURATION" "$ROUNDS" <<'EOF'
import statistics, sys

def micros(text):
    for unit, scale in (("us", 1.0), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(text)

path, cpus, conns, secs, rounds = sys.argv[1:]
rows = [line.rstrip("\n").split("\t") for line in open(path)]
summary = {}
for target in ("direct", "raw", "timeout", "stack"):
    mine = [r for r in rows if r[1] == target]
    summary[target] = (
        statistics.median(float(r[2]) for r in mine),
        statistics.median(micros(r[3]) for r in mine),
        statistics.median(micros(r[4]) for r in mine),
    )
print()
print(f"{rounds} interleaved rounds of {secs} s, {conns} connections, wrk on CPU 1, servers on CPU 0 ({cpus} CPUs)")
print(f"{'target':8} {'req/s':>10} {'p50 us':>9} {'p99 us':>9}")
for target, (rps, p50, p99) in summary.items():
    print(f"{target:8} {rps:10.0f} {p50:9.0f} {p99:9.0f}")
raw, timeout, stack = summary["raw"], summary["timeout"], summary["stack"]
for name, (a, b) in {
    "stack / raw": (stack, raw),
    "timeout / raw": (timeout, raw),
    "stack / timeout": (stack, timeout),
}.items():
    print(f"{name + ':':16} req/s {a[0] / b[0]:.3f}, p99 {a[2] / b[2]:.3f}")
EOF
