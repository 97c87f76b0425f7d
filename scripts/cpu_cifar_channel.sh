#!/usr/bin/env bash
# CPU evidence on real CIFAR-10 for the channel-sparsity issue (25): the small
# CNN, 10 + 5 epochs, batch 128, validation split 10% fixed by --val-seed 0,
# every method at the same share of the dense FLOPs (--target-flops F), each
# run's last 5 epochs on its slim network (slim training, the default;
# widths rounded up to --width-multiple 16). Rows:
#   netslim-fF-lrL-sS   network slimming (Liu et al. 2017): SGD with l1 on
#                       the BatchNorm scales (--bn-l1 1e-4), channels pruned
#                       by |scale| to F at epoch 10, fine-tuning, peak lr L
#   rdach-fF-gG-sS      channel-group RDA, lambda_g chosen each step for F
#                       (uniform group weighting), gamma G, then ASR
#   rmdach-fF-lrL-sS    the same with RMDA (momentum 0.1), step L
#   e.g. bash scripts/cpu_cifar_channel.sh netslim-f0.5-lr0.1-s0 rdach-f0.5-g1-s0
# Protocol: the same 3-value step-size search per method on seed 0 at F = 0.5
# (net-slim lr 0.05/0.1/0.2, RDA gamma 0.5/1/2, RMDA lr 0.1/0.2/0.4), then
# seeds 1 and 2 at each method's best, at F = 0.5 and 0.25.
# Rows run one after another: about 20 minutes a row alone on 2 CPU cores.
# Run directories land in $RUNS (default runs/cifar-channel).
set -u
export PYTHONPATH=${PYTHONPATH:-.}
PY=${PYTHON:-python3}
R=${RUNS:-runs/cifar-channel}
D=(--model small_cnn --dataset folder --data-dir "${DATA:-.data/train.tar.xz}"
   --val-fraction 0.1 --val-seed 0 --progress none --out "$R"
   --checkpoint-every 1000 --epochs 10 --asr-epochs 5 --batch-size 128)
train() { echo "== $*" >&2; "$PY" -m train "${D[@]}" "$@" || echo "== failed: $*" >&2; }
row() {
  local name=$1 seed=${1##*-s} rest=${1%-s*}
  local method=${rest%%-f*} f_and_step=${rest#*-f}
  local f=${f_and_step%%-*} step=${f_and_step#*-}
  case $method in
    netslim) train --method net-slim --bn-l1 1e-4 --target-flops "$f" \
          --lr "${step#lr}" --seed "$seed" --run-name "$name" ;;
    rdach) train --method rda --init-scale 2 --structure channel \
          --target-flops "$f" --gamma "${step#g}" --seed "$seed" \
          --run-name "$name" ;;
    rmdach) train --method rmda --structure channel --target-flops "$f" \
          --lr "${step#lr}" --seed "$seed" --run-name "$name" ;;
    *) echo "unknown row: $1" >&2; exit 2 ;;
  esac
}
for r in "$@"; do row "$r"; done
