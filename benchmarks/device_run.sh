#!/usr/bin/env bash
# One time-boxed GPU session, in phases. Every phase writes as it goes and runs under its own
# cap, so whatever finishes before the limit is kept and a failing phase does not stop the next.
#
# Usage (from the repository root, on the GPU machine):
#   [PHASES=...] bash benchmarks/device_run.sh OUT_DIR TOTAL_SECONDS [GRAPH_DIR] [CACHE_DIR]
# GRAPH_DIR holds baby.inter (default ../shared/data/baby-graph); CACHE_DIR, when given,
# is copied to ~/.cache/mirrorgrad_jax (a prebuilt MovieLens-100K for offline machines).
#
# PHASES (comma-separated, run in this order whatever the order given):
#   epoch        benchmarks/epoch_time.py over EPOCH_MODELS (cap EPOCH_CAP s)
#   overhead     benchmarks/mg_overhead.py
#   accuracy     benchmarks/accuracy_table.py over ACC_MODELS x ACC_DATASETS, WORKERS workers
#   patience     benchmarks/patience_sweep.py over PATIENCE_MODELS x PATIENCE_DATASETS with
#                PATIENCE_BUDGETS (the --budgets string), WORKERS workers, cap PATIENCE_CAP s,
#                no new run after PATIENCE_STOP_AFTER s. PATIENCE_RERUN names model:dataset
#                cells whose recorded runs are set aside so the whole cell runs here (one
#                device per cell). New runs come back as OUT_DIR/patience_new.jsonl.
#   vs_reference benchmarks/vs_reference.py on VS_MODELS (VS_EPOCHS epochs per arm) with the
#                reference checkout REFERENCE_DIR; the reference runs on REF_PYTHON (default
#                the same python3: the GPU image holds torch); whatever time is left, less 15 s.
# Default: epoch,overhead,accuracy (the session that produced epoch_time.md's GPU table).
set -u
out=${1:?output folder}
total=${2:?seconds this script may use}
graph=${3:-../shared/data/baby-graph}
cache=${4:-}
phases=",${PHASES:-epoch,overhead,accuracy},"
for phase in ${phases//,/ }; do
  case $phase in
    epoch|overhead|accuracy|patience|vs_reference) ;;
    *) echo "device_run.sh: unknown phase '$phase' in PHASES (choose from epoch, overhead, accuracy, patience, vs_reference)" >&2; exit 2 ;;
  esac
done
# overridable for a dry run on a CPU
epoch_models=${EPOCH_MODELS:-mmgcn,vbpr,bm3,freedom,lightgcn,dragon,grcn,dualgnn,slmrec}
epoch_cap=${EPOCH_CAP:-150}
acc_models=${ACC_MODELS:-vbpr,bm3,freedom,slmrec,dualgnn,dragon,grcn,mmgcn}
acc_datasets=${ACC_DATASETS:-synthetic,movielens-100k}
workers=${WORKERS:-14}
python=${PYTHON:-python3}
[[ $python == */* && $python != /* ]] && python=$PWD/$python  # the checks below run from /tmp
start=$(date +%s)
left() { echo $(( total - ($(date +%s) - start) )); }
want() { [[ $phases == *",$1,"* ]]; }
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache}

{ nvidia-smi -L; "$python" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$out/env.txt"
# scratch space of this call (runs-file copies, the package), removed at the end
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# the installed layout without pip (offline machine): mirrorgrad_jax.models comes from models/
site=$scratch/site
mkdir -p "$site" && cp -r mirrorgrad_jax "$site/" && cp -r models "$site/mirrorgrad_jax/models"
export PYTHONPATH=$site
(cd /tmp && "$python" -c "import mirrorgrad_jax.models as m; print('models:', ', '.join(m.available_models()))") || exit 1
if [ -n "$cache" ]; then mkdir -p ~/.cache/mirrorgrad_jax && cp -r "$cache"/. ~/.cache/mirrorgrad_jax/; fi

# The rows of runs file $2 (a working copy) that are not in $1 (what it started from), written to $3.
new_rows() {
  "$python" - "$1" "$2" "$3" <<'EOF'
import sys
source, copy, dest = sys.argv[1:]
old = {l for l in open(source) if l.strip()}
new = [l for l in open(copy) if l.strip() and l not in old]
open(dest, "w").writelines(new)
print(len(new), "new runs in", dest)
EOF
}

if want epoch; then
  echo "== epoch time ($(left)s left)"
  timeout "$epoch_cap" "$python" benchmarks/epoch_time.py \
    --models "$epoch_models" --epochs 3 --graph "$graph" \
    --child-timeout 60 --jsonl "$out/epoch_time.jsonl" --out "$out/epoch_time.md" 2>&1 | tail -n 40
fi

if want overhead; then
  echo "== MG overhead ($(left)s left)"
  timeout 40 "$python" benchmarks/mg_overhead.py --batches 30 --repeats 3 --out "$out/mg_overhead.md" 2>&1 | tail -n 20
fi

if want accuracy; then
  echo "== accuracy ($(left)s left)"
  budget=$(( $(left) - 15 ))
  cp benchmarks/results/accuracy_runs.jsonl "$scratch/acc_runs.jsonl"
  timeout "$budget" "$python" benchmarks/accuracy_table.py --models "$acc_models" \
    --datasets "$acc_datasets" --seeds 3 --epochs 100 --patience 10 --valid-metric recall@20 \
    --runs "$scratch/acc_runs.jsonl" --workers "$workers" --stop-after $(( budget - 120 )) >"$out/accuracy.md" 2>"$out/accuracy.log"
  new_rows benchmarks/results/accuracy_runs.jsonl "$scratch/acc_runs.jsonl" "$out/accuracy_new.jsonl"
fi

if want patience; then
  echo "== patience sweep ($(left)s left)"
  runs=$scratch/patience_runs.jsonl
  # the committed runs, less the cells to rerun whole here
  "$python" - benchmarks/results/patience_sweep_runs.jsonl "$runs" "${PATIENCE_RERUN:-}" <<'EOF'
import json, sys
source, dest, rerun = sys.argv[1], sys.argv[2], {c for c in sys.argv[3].split(",") if c}
kept = [l for l in open(source) if l.strip() and "{model}:{dataset}".format(**json.loads(l)) not in rerun]
open(dest, "w").writelines(kept)
print(f"{len(kept)} recorded runs kept; rerun here: {sorted(rerun) or 'none'}")
EOF
  cp "$runs" "$scratch/patience_runs_before.jsonl"
  timeout "${PATIENCE_CAP:-$(( $(left) - 15 ))}" "$python" benchmarks/patience_sweep.py \
    --models "${PATIENCE_MODELS:?}" --datasets "${PATIENCE_DATASETS:-synthetic,movielens-100k}" --seeds 3 \
    --budget 120 --budgets "${PATIENCE_BUDGETS:-}" --runs "$runs" --workers "$workers" \
    --stop-after "${PATIENCE_STOP_AFTER:-1000000}" >"$out/patience.md" 2>"$out/patience.log"
  grep -v "Warning\|warn(" "$out/patience.log" | tail -n 50
  new_rows "$scratch/patience_runs_before.jsonl" "$runs" "$out/patience_new.jsonl"
fi

if want vs_reference; then
  echo "== side by side with the reference ($(left)s left)"
  timeout $(( $(left) - 15 )) "$python" benchmarks/vs_reference.py --reference "${REFERENCE_DIR:?}" \
    --ref-python "${REF_PYTHON:-$python}" --models "${VS_MODELS:-bm3,vbpr,freedom}" --epochs "${VS_EPOCHS:-3}" \
    --graph "$graph" --jsonl "$out/vs_reference_runs.jsonl" --out "$out/vs_reference.md" 2>"$out/vs_reference.log" | tail -n 40
  tail -n 5 "$out/vs_reference.log"
fi
echo "done with $(left)s left"
