#!/usr/bin/env bash
# One time-boxed GPU session: speed figures first (the card to itself), then accuracy runs
# in parallel workers until the deadline. Every phase writes as it goes, so whatever
# finishes before the limit is kept.
#
# Usage (from the repository root, on the GPU machine):
#   bash benchmarks/device_run.sh OUT_DIR TOTAL_SECONDS [GRAPH_DIR] [CACHE_DIR]
# GRAPH_DIR holds baby.inter (default ../shared/data/baby-graph); CACHE_DIR, when given,
# is copied to ~/.cache/mirrorgrad_jax (a prebuilt MovieLens-100K for offline machines).
set -u
out=${1:?output folder}
total=${2:?seconds this script may use}
graph=${3:-../shared/data/baby-graph}
cache=${4:-}
# overridable for a dry run on a CPU
epoch_models=${EPOCH_MODELS:-mmgcn,vbpr,bm3,freedom,lightgcn,dragon,grcn,dualgnn,slmrec}
epoch_cap=${EPOCH_CAP:-150}
acc_models=${ACC_MODELS:-vbpr,bm3,freedom,slmrec,dualgnn,dragon,grcn,mmgcn}
acc_datasets=${ACC_DATASETS:-synthetic,movielens-100k}
workers=${WORKERS:-14}
start=$(date +%s)
left() { echo $(( total - ($(date +%s) - start) )); }
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache

{ nvidia-smi -L; python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$out/env.txt"
# the installed layout without pip (offline machine): mirrorgrad_jax.models comes from models/
rm -rf /tmp/site && mkdir -p /tmp/site && cp -r mirrorgrad_jax /tmp/site/ && cp -r models /tmp/site/mirrorgrad_jax/models
export PYTHONPATH=/tmp/site
(cd /tmp && python3 -c "import mirrorgrad_jax.models as m; print('models:', ', '.join(m.available_models()))") || exit 1
if [ -n "$cache" ]; then mkdir -p ~/.cache && cp -r "$cache" ~/.cache/mirrorgrad_jax; fi

echo "== epoch time ($(left)s left)"
timeout "$epoch_cap" python3 benchmarks/epoch_time.py \
  --models "$epoch_models" --epochs 3 --graph "$graph" \
  --child-timeout 60 --jsonl "$out/epoch_time.jsonl" --out "$out/epoch_time.md" 2>&1 | tail -n 40

echo "== MG overhead ($(left)s left)"
timeout 40 python3 benchmarks/mg_overhead.py --batches 30 --repeats 3 --out "$out/mg_overhead.md" 2>&1 | tail -n 20

echo "== accuracy ($(left)s left)"
budget=$(( $(left) - 15 ))
cp benchmarks/results/accuracy_runs.jsonl /tmp/acc_runs.jsonl
timeout "$budget" python3 benchmarks/accuracy_table.py --models "$acc_models" \
  --datasets "$acc_datasets" --seeds 3 --epochs 100 --patience 10 --valid-metric recall@20 \
  --runs /tmp/acc_runs.jsonl --workers "$workers" --stop-after $(( budget - 120 )) >"$out/accuracy.md" 2>"$out/accuracy.log"
# only the rows this session added come back
python3 - "$out/accuracy_new.jsonl" <<'EOF'
import sys
old = {l for l in open("benchmarks/results/accuracy_runs.jsonl") if l.strip()}
new = [l for l in open("/tmp/acc_runs.jsonl") if l.strip() and l not in old]
open(sys.argv[1], "w").writelines(new)
print(len(new), "new accuracy runs")
EOF
echo "done with $(left)s left"
