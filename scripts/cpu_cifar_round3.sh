#!/usr/bin/env bash
# CPU evidence on real CIFAR-10 for the proximal-family issue (24): the small
# CNN, 10 + 5 epochs, batch 128, validation split 10% fixed by --val-seed 0,
# every method at sparsity 0.98 (--target-sparsity), seeds 0, 1 and 2.
# Protocol: each method gets the same search of its step size on seed 0
# (3 values), then seeds 1 and 2 at the value that won on seed 0:
#   gmp-global-lr{0.05,0.1,0.2}-s0   global-magnitude GMP, sgd's recipe, peak lr
#   rda-g{0.5,1,2}-s0                RDA + ASR, lambda_t chosen for 0.98, l1 = 0
#                                    over all ASR epochs (debiased), gamma
#   rmda-lr{0.05,0.1,0.2}-s0         RMDA (momentum 0.1) + ASR, the same target
#   grda-lr{0.05,0.1,0.2}-s0         gRDA (mu 0.51) + ASR, the same target
#   prox-adam-lr{3e-4,1e-3,3e-3}-s0  proximal Adam + ASR, the same target
# The allocation lever (the dual methods prune conv0 and the classifier much
# harder than global GMP does): METHOD-erk-... spreads the same target over
# the kernels by Erdos-Renyi-Kernel (--sparsity-distribution erk), e.g.
#   rmda-erk-lr0.2-s0, grda-erk-lr0.2-s0, rda-erk-g1-s0
# and METHOD-mag-... by global GMP's per-kernel counts (--sparsity-distribution
# magnitude: each step, the counts of one magnitude threshold on the current
# weights, then one lambda per kernel at its count), e.g.
#   rmda-mag-lr0.2-s0, grda-mag-lr0.2-s0, rda-mag-g1-s0, prox-adam-mag-lr1e-3-s0
# The schedule levers: METHOD-ramp1-... ramps the target over all of
# --epochs (--target-ramp 1, global GMP's own schedule) instead of half of
# it; rmda-crampX-... raises RMDA's momentum weight c linearly to 1 over the
# last share X of --epochs (--rmda-momentum-ramp X) instead of at the last
# step, e.g. rmda-ramp1-lr0.4-s0, rmda-cramp0.2-lr0.4-s0, grda-ramp1-lr0.2-s0
#   bash scripts/cpu_cifar_round3.sh gmp-global-lr0.1-s0 gmp-global-lr0.05-s0
# Rows run one after another, in the order given: about 20 minutes a row
# alone on 2 CPU cores; invocations side by side share the cores. Run
# directories land in $RUNS (default runs/cifar-r3); tables: docs/RESULTS.md.
set -u
export PYTHONPATH=${PYTHONPATH:-.}
PY=${PYTHON:-python3}
R=${RUNS:-runs/cifar-r3}
TARGET=${TARGET:-0.98}
D=(--model small_cnn --dataset folder --data-dir "${DATA:-.data/train.tar.xz}"
   --val-fraction 0.1 --val-seed 0 --progress none --out "$R"
   --checkpoint-every 1000 --epochs 10 --asr-epochs 5 --batch-size 128
   --target-sparsity "$TARGET")
train() { echo "== $*" >&2; "$PY" -m train "${D[@]}" "$@" || echo "== failed: $*" >&2; }
row() {
  local seed=${1##*-s} name=$1 body=${1%-s*} alloc=()
  if [[ $body == *-ramp1-* ]]; then
    alloc+=(--target-ramp 1); body=${body/-ramp1-/-}
  fi
  if [[ $body =~ -cramp([0-9.]+)- ]]; then
    alloc+=(--rmda-momentum-ramp "${BASH_REMATCH[1]}")
    body=${body/-cramp${BASH_REMATCH[1]}-/-}
  fi
  if [[ $body == *-erk-* ]]; then
    alloc+=(--sparsity-distribution erk); body=${body/-erk-/-}
  elif [[ $body == *-mag-* ]]; then
    alloc+=(--sparsity-distribution magnitude); body=${body/-mag-/-}
  fi
  case $body in
    gmp-global-lr*) train --method gmp --sparsity-distribution global \
          --lr "${body#gmp-global-lr}" --seed "$seed" --run-name "$name" ;;
    rda-g*) train --method rda --init-scale 2 --gamma "${body#rda-g}" \
          "${alloc[@]}" --seed "$seed" --run-name "$name" ;;
    rmda-lr*|grda-lr*|prox-adam-lr*) train --method "${body%-lr*}" \
          --lr "${body##*-lr}" "${alloc[@]}" --seed "$seed" --run-name "$name" ;;
    *) echo "unknown row: $1" >&2; exit 2 ;;
  esac
}
for r in "$@"; do row "$r"; done
