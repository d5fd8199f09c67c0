#!/usr/bin/env bash
# The issue-25 GPU measurements in order, each under its own time limit, logs and JSON into DIR:
#
#   bash benchmarks/issue25_gpu.sh DIR [STEP ...]
#
# STEPs (default: all, in this order; ~8 min in all on an H100):
#   extend_attn  benchmarks/extend_attn_bench.py      ~1 min
#   ttft         benchmarks/ttft_bench.py (1B, 8B)    ~2 min
#   serving_1b   benchmarks/serving_gpu.py 1B shape   ~2.5 min
#   serving_8b   benchmarks/serving_gpu.py 8B shape   ~3 min
# Each step's output is DIR/STEP.txt (its last 40 lines are echoed) and DIR/STEP.json.
set -u
DIR=${1:?usage: issue25_gpu.sh DIR [extend_attn ttft serving_1b serving_8b]}
shift
STEPS=${*:-extend_attn ttft serving_1b serving_8b}
PY=${PYTHON:-python}
mkdir -p "$DIR"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
git rev-parse HEAD > "$DIR/commit.txt" 2>/dev/null
nvidia-smi > "$DIR/nvidia-smi.txt" 2>&1

step() {  # name, seconds allowed, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s): $*"
    local start=$SECONDS
    timeout --kill-after=20 "$limit" "$@" > "$DIR/$name.txt" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
    tail -n 40 "$DIR/$name.txt"
}

for s in $STEPS; do
    case $s in
        extend_attn) step "$s" 150 "$PY" benchmarks/extend_attn_bench.py --json "$DIR/$s.json" ;;
        ttft) step "$s" 240 "$PY" benchmarks/ttft_bench.py --json "$DIR/$s.json" ;;
        serving_1b) step "$s" 240 "$PY" benchmarks/serving_gpu.py --shape llama-3.2-1b --json "$DIR/$s.json" ;;
        serving_8b) step "$s" 270 "$PY" benchmarks/serving_gpu.py --shape llama-3-8b --json "$DIR/$s.json" ;;
        *) echo "unknown step $s" ;;
    esac
done
