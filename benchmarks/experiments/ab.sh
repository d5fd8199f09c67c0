#!/bin/bash
# Same-run A/B of main against main + experiment patches, on the device (see README.md here).
#   bash benchmarks/experiments/ab.sh OUT_DIR ROUNDS PATCH...
# Builds /tmp/ab_patched (a copy of HEAD with every PATCH applied, in order), then runs
# `gpu_bench.py` decode (both shapes) alternately in HEAD's tree and the patched tree, ROUNDS
# times each, appending the printed lines to OUT_DIR/ab_{main,patched}.txt and a JSON per run.
# Put the carried wheels on PYTHONPATH first (the device README's pip --target line).
set -u
out=$1 rounds=$2; shift 2
root=$PWD
rm -rf /tmp/ab_patched && mkdir -p /tmp/ab_patched "$out"
git archive HEAD | tar -x -C /tmp/ab_patched
for p in "$@"; do (cd /tmp/ab_patched && git apply --whitespace=nowarn "$root/$p") || { echo "patch $p does not apply"; exit 1; }; done
for i in $(seq "$rounds"); do
  for tree in main patched; do
    dir=$root; [ "$tree" = patched ] && dir=/tmp/ab_patched
    (cd "$dir" && PYTHONPATH="${PYTHONPATH:-}:$dir" timeout 300 python3 benchmarks/gpu_bench.py \
        --shapes llama-3-8b llama-3.2-1b --skip sched offline shared --json "$out/ab_${tree}_$i.json" 2>&1 \
      | grep -E "copy bandwidth|decode bs1" | tee -a "$out/ab_$tree.txt")
  done
done
