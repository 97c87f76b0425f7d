#!/usr/bin/env bash
# Issue 5's bet, checked on CPU before device time is spent on it: does
# debiasing the end of ASR (--debias-epochs) lift RDA on real CIFAR-10 as it
# does on digits? The small CNN, 10 + 5 epochs, seed 0, validation split of
# the JPEG tarball. About 20 minutes per run on 2 CPU cores (about 600 img/s).
# Table: docs/RESULTS.md; run directories: docs/results/cifar-smallcnn-cpu/.
set -u
export PYTHONPATH=${PYTHONPATH:-.}
PY=${PYTHON:-python3}
R=${RUNS:-runs/cifar-cpu}
D=(--model small_cnn --dataset folder --data-dir "${DATA:-.data/train.tar.xz}"
   --val-fraction 0.1 --progress none --out "$R" --checkpoint-every 1000
   --seed 0 --epochs 10 --asr-epochs 5)
RDA=(--method rda --batch-size 128 --gamma 1 --l1 1e-3 --init-scale 2)
train() { echo "== $*" >&2; "$PY" -m train "${D[@]}" "$@" || echo "== failed: $*" >&2; }
train "${RDA[@]}" --run-name rda-l1e-3-10-5
train "${RDA[@]}" --debias-epochs 3 --run-name rda-l1e-3-10-5-debias3
train --method prune-finetune --batch-size 128 --lr 0.1 --prune-scope global \
  --target-sparsity-from "$R/rda-l1e-3-10-5-debias3" --run-name prune-ft-global-15
train --method sgd --batch-size 128 --lr 0.1 --run-name sgd-15
train "${RDA[@]}" --debias-epochs 5 --run-name rda-l1e-3-10-5-debias5
"$PY" benchmarks/goals.py "$R"
