#!/bin/bash
# Same-run A/B(/C...) of HEAD against HEAD + experiment patches, on the device (README.md here).
#   bash benchmarks/experiments/ab.sh OUT_DIR ROUNDS NAME=PATCH[,PATCH...] [NAME=...]
# Builds /tmp/ab_NAME (a copy of HEAD with the patches applied, in order) per variant, then runs
# `gpu_bench.py` decode (both shapes) in HEAD's tree ("main") and in each variant's tree, in
# turn, ROUNDS times, appending the printed lines to OUT_DIR/ab_NAME.txt and a JSON per run.
# Put the carried wheels on PYTHONPATH first (the device README's pip --target line).
set -u
out=$1 rounds=$2; shift 2
root=$PWD names=(main)
mkdir -p "$out"
for spec in "$@"; do
  name=${spec%%=*} patches=${spec#*=}
  rm -rf "/tmp/ab_$name" && mkdir -p "/tmp/ab_$name" && git archive HEAD | tar -x -C "/tmp/ab_$name"
  for p in ${patches//,/ }; do
    (cd "/tmp/ab_$name" && git apply --whitespace=nowarn "$root/$p") || { echo "$p does not apply"; exit 1; }
  done
  names+=("$name")
done
for i in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    dir=$root; [ "$name" != main ] && dir=/tmp/ab_$name
    echo "== round $i: $name"
    (cd "$dir" && PYTHONPATH="${PYTHONPATH:-}:$dir" timeout 300 python3 benchmarks/gpu_bench.py \
        --shapes llama-3-8b llama-3.2-1b --skip sched offline shared --json "$out/ab_${name}_$i.json" 2>&1 \
      | grep -E "copy bandwidth|decode bs1" | tee -a "$out/ab_$name.txt")
  done
done
