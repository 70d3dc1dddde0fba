#!/usr/bin/env bash
# Runs hodei-loadgen's latency scenarios against two builds, interleaved
# (before, after, before, after, ...) so both see the same machine, and
# prints the median of each percentile over the runs.
#
#   benches/loadgen-compare.sh BEFORE_DIR AFTER_DIR [RUNS]
#
# Each DIR holds a build's hodei-loadgen and hodei-server, e.g. a
# worktree's target/dist (or target/release, to compare the profiles). RUNS defaults to 5.
set -euo pipefail
before=$1 after=$2 runs=${3:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
scenarios=(
  "durable-1000/s|--rate 1000 --jobs 10000"
  "durable-5000/s|--rate 5000 --jobs 30000"
  "memory-1000/s|--rate 1000 --jobs 10000 --store memory"
)
for ((i = 1; i <= runs; i++)); do
  for side in before after; do
    dir=$before
    [[ $side == after ]] && dir=$after
    for s in "${scenarios[@]}"; do
      name=${s%%|*}
      # shellcheck disable=SC2086 # the flags are words on purpose
      line=$("$dir/hodei-loadgen" --agents 50 --clients 64 ${s#*|} 2>/dev/null | tail -n 1)
      echo "$side $name $line" >>"$out"
    done
  done
done
python3 - "$out" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, name, text = line.split(" ", 2)
    runs[(name, side)].append(json.loads(text))
for (name, side), rs in sorted(runs.items()):
    a = [r["submit_to_assign_ms"] for r in rs]
    med = lambda k: statistics.median(x[k] for x in a)
    each = " ".join(f"{x['p99']:.1f}" for x in a)
    print(f"{name:15} {side:6} submit-to-assign p50 {med('p50'):.2f} ms, p99 {med('p99'):.2f} ms (p99 of each run: {each})")
PY
