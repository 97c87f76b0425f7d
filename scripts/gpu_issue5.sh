#!/usr/bin/env bash
# Issue 5, next device session: ResNet-18 on the CIFAR-10 JPEG tarball, 100
# epochs in all, validation split. RDA + ASR with and without debiasing
# (--debias-epochs, docs/DESIGN.md), dense SGD, and prune-finetune at the
# debiased run's sparsity, same budget. About 2 minutes per run on an H200
# (80k img/s dense at batch 512; RDA at batch 128 runs near 47k img/s), so
# PART=a (3 runs) and PART=b (2 runs) each fit one 10-minute call.
# Needs .data/train.tar.xz (a copy of ../shared/data/cifar10-jpeg/train.tar.xz).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 RDA_OPTAX_CACHE=${RDA_OPTAX_CACHE:-/tmp/rda-cache}
R=${RUNS:-${OUT:-/tmp}/issue5}
D="--dataset folder --data-dir .data/train.tar.xz --val-fraction 0.1 --progress none --out $R --checkpoint-every 1000"
RDA="--method rda --model resnet18 --epochs 70 --asr-epochs 30 --batch-size 128 --gamma 1 --l1 1e-4 --init-scale 10"
case "${PART:-a}" in
  a)  # goals 2 and 3: debiased RDA, dense SGD, prune-finetune at its sparsity
    python3 -m train $RDA --debias-epochs 10 $D --run-name rda-70-30-debias10
    python3 -m train --method sgd --model resnet18 --epochs 70 --asr-epochs 30 --batch-size 512 --lr 0.4 --lr-schedule onecycle $D --run-name sgd-100
    python3 -m train --method prune-finetune --model resnet18 --epochs 70 --asr-epochs 30 --batch-size 512 --lr 0.4 --lr-schedule onecycle --target-sparsity-from "$R/rda-70-30-debias10" --prune-scope global $D --run-name prune-ft-100
    ;;
  b)  # the paper's ASR on the same card, and debiasing for the whole ASR phase
    python3 -m train $RDA $D --run-name rda-70-30
    python3 -m train $RDA --debias-epochs 30 $D --run-name rda-70-30-debias30
    ;;
esac
for f in "$R"/*/summary.json; do
  python3 -c "import json,sys; d=json.load(open('$f')); print(f\"{'$f'.split('/')[-2]:<24} val {d['val_top1']:.2f}  sparsity {d['sparsity']:.4f}  {d['wall_s']:.0f} s\")"
done
