#!/usr/bin/env bash
# Engine benchmarks (not tests): `flow plan` on a generated 1,000-node workflow (empty and
# fully cached store) and a fully cached `flow run` of a 10-node workflow, timed with hyperfine.
# Targets: plan < 100 ms, cached run < 50 ms.
#   scripts/bench-engine.sh            # release build, then hyperfine
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
cargo build --release --quiet
flow="$PWD/target/release/flow"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A binary tree of shell nodes: node i reads the output of node (i-1)/2.
generate() {
  local count=$1
  echo "name: bench-$count"
  echo "params: {salt: 1}"
  echo "nodes:"
  for ((i = 0; i < count; i++)); do
    echo "  n$i:"
    echo "    uses: shell"
    if ((i == 0)); then
      echo "    with: { run: \"echo \${params.salt} > \$FLOW_OUT/x\" }"
    else
      echo "    with: { inputs: { up: \"\${n$(((i - 1) / 2)).out}\" }, run: \"echo $i > \$FLOW_OUT/x\" }"
    fi
  done
}

generate 1000 >"$work/w1000.yaml"
generate 10 >"$work/w10.yaml"
cd "$work"
"$flow" run w10.yaml --jobs 2 >/dev/null 2>&1
hyperfine --warmup 3 --export-json "$work/plan-empty.json" "$flow --store empty-store plan w1000.yaml"
"$flow" run w1000.yaml --jobs 2 >/dev/null 2>&1
hyperfine --warmup 3 "$flow plan w1000.yaml" "$flow run w10.yaml"
