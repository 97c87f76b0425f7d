#!/usr/bin/env bash
# All GPU checks of this session in one go (device tool): benchmarks, the
# reference row of ALGORITHMS.md, dense SGD and prune-finetune at equal
# epochs. Results land in $OUT. Extra args (e.g. a CPU dry run's
# "--model small_cnn --epochs 1 --asr-epochs 1") are appended to every run.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 RDA_OPTAX_CACHE=${RDA_OPTAX_CACHE:-/tmp/rda-cache}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R=${RUNS:-/tmp/gpu-runs}; rm -rf "$R"
PY=${PY:-python3}
log() { echo "=== $(date +%T) $*"; }
{
log versions; $PY -c "import jax, optax, flax, orbax.checkpoint as o; print(jax.__version__, optax.__version__, flax.__version__, jax.devices())"
nvidia-smi -L 2>/dev/null
log update_overhead; $PY benchmarks/update_overhead.py --steps 50 --json "$OUT/update_overhead.json"
log train_throughput; $PY benchmarks/train_throughput.py --batch-size 128 --steps 200 --methods sgd,rda --json "$OUT/train_throughput.json" ${BENCH_EXTRA:-}
D="--dataset folder --data-dir .data/train.tar.xz --val-fraction 0.1 --progress lines --out $R --checkpoint-every 100"
log reference-rda; $PY -m train --preset fast-resnet18-cifar10 $D --run-name ref-rda "$@"
log dense-sgd; $PY -m train --method sgd --model resnet18 --epochs 30 --asr-epochs 10 --batch-size 512 --lr 0.4 --lr-schedule onecycle $D --run-name dense-sgd "$@"
log prune-finetune; $PY -m train --method prune-finetune --model resnet18 --epochs 30 --asr-epochs 10 --batch-size 512 --lr 0.4 --lr-schedule onecycle --target-sparsity-from "$R/ref-rda" --prune-scope global $D --run-name prune-ft "$@"
log table
for d in "$R"/*/; do $PY -c "import json,sys; s=json.load(open(sys.argv[1]+'summary.json')); print(f\"{s['method']:<15} val {s['val_top1']:.2f} sparsity {s['sparsity']:.4f} epochs {s['epochs']} wall {s['wall_s']:.0f}s {s['device']}\")" "$d"; done
log done
} 2>&1 | tee "$OUT/log.txt"
tar czf "$OUT/runs.tgz" --exclude=checkpoints -C "$(dirname "$R")" "$(basename "$R")"
