#!/usr/bin/env bash
# The 100-epoch runs of docs/RESULTS.md (issue 5 groundwork): RDA 70 + 30
# epochs, the same with a decreasing l1 (section 5.2), and dense SGD for 100.
# Needs .data/train.tar.xz (a copy of ../shared/data/cifar10-jpeg/train.tar.xz).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 RDA_OPTAX_CACHE=${RDA_OPTAX_CACHE:-/tmp/rda-cache}
R=${RUNS:-/tmp/e100}
D="--dataset folder --data-dir .data/train.tar.xz --val-fraction 0.1 --progress none --out $R --checkpoint-every 1000 --model resnet18"
python3 -m train --method rda --epochs 70 --asr-epochs 30 --batch-size 128 --gamma 1 --l1 1e-4 --init-scale 10 $D --run-name rda-70-30
python3 -m train --method sgd --epochs 70 --asr-epochs 30 --batch-size 512 --lr 0.4 --lr-schedule onecycle $D --run-name sgd-100
python3 -m train --method rda --epochs 70 --asr-epochs 30 --batch-size 128 --gamma 1 --l1 1e-4 --l1-schedule 0:1e-4,50:5e-5 --init-scale 10 $D --run-name rda-70-30-l1sched
