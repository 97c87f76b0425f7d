#!/usr/bin/env bash
# Issue 17 on a device: RDA against dense, GMP and RigL, ResNet-18 and
# VGG-16bn, 100 epochs in all for every method (70 + 30 for the two-phase
# ones), CIFAR-10 JPEG tarball, validation split 10% (seed 0). Replaces
# scripts/gpu_issue5.sh. One PART per `run` call, in this order (rows of
# issue 17 in brackets; runs inside a wave share the GPU, side by side):
#   PART=a  ResNet-18. Wave 1: dense SGD [1] | RDA + ASR, l1 = 0 for the last
#           DEBIAS ASR epochs [2]. Wave 2: GMP | RigL at the sparsity RDA
#           reached (--target-sparsity-from) [3], dense's recipe.
#   PART=b  ResNet-18. Wave 1: RDA --target-sparsity 0.95 | 0.98 [4] (skipped
#           with a line when the trainer lacks it) | RDA seed 1 [5] (| dense
#           seed 1 [5] when row 4 is skipped). Wave 2: GMP | RigL seed 1 [5].
#   PART=c  VGG-16bn [6]. Wave 1: dense | RDA + ASR + debias. Wave 2: GMP at
#           RDA's sparsity (| ResNet-18 dense seed 1 [5] when PART b ran row 4).
#   PART=d  VGG-16bn [7]: channel-group RDA (--structure channel) | sparse-
#           group RDA, then network slimming at the channel run's FLOPs.
#           Exits 2 with a line when the trainer lacks --structure/net-slim.
# Seed 1 draws another validation split as well (the trainer has one seed).
#
# Device seconds, estimated on an H200 from 47k img/s (RDA, batch 128) and
# 80k img/s (dense, GMP, RigL, batch 512) alone, 45k training images, ~20 s
# compilation and ~20 s evaluation per run, no gain from sharing (worst case):
# the tarball's first decode ~30-60 s (cached in RDA_OPTAX_CACHE after that);
# a: wave 1 ~210 s, wave 2 ~190 s, goals ~10 s: ~420-470 s.
# b: wave 1 ~370 s (3 RDA runs), wave 2 ~190 s: ~560-620 s: may not fit one
#    call; run it with PARALLEL=3 and a 600 s limit only if PART a's speed
#    table shows a gain from sharing, else RDA_TARGETS=0.95 (~450 s).
# c: VGG-16bn costs about half ResNet-18's FLOPs: ~250-350 s.
# d: ~250-300 s.
# How to run it and what comes back: docs/RESULTS.md, "Issue 17 on a device".
#
# Every run writes its directory under RUNS (default $OUT/issue17) with the
# trainer's log in RUNS/logs/ and one line per finished run in
# RUNS/timeline.tsv. After each wave, benchmarks/goals.py rewrites
# RUNS/goals.md; at the end it prints the goals table (gap to dense, goal 1,
# RDA against GMP/RigL at equal sparsity, goal 2) and the speed tables
# (per-run median img/s, total img/s per wave side by side).
#
# Overrides (tests/test_gpu_script.py runs PART=a on CPU with a tiny tarball):
# DATA (default .data/train.tar.xz), MODEL (every part's model), E1 + E2
# (phase epochs, default 70 + 30), DEBIAS (default 15), RDA_TARGETS (default
# "0.95 0.98"), PARALLEL (runs at once in a wave, default 3; 1 runs them one
# by one, the alone baseline), MEM_FRACTION (GPU memory per process, default
# 0.9 / PARALLEL), RUNS, PYTHON, DENSE_TOP1 (for goals.py when RUNS holds no
# dense run of a model: PART b's row 4 and PART d use PART a/c's).
set -u
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
export RDA_OPTAX_CACHE=${RDA_OPTAX_CACHE:-/tmp/rda-cache}
PY=${PYTHON:-python3}
PART=${PART:-a}
case "$PART" in
  a|b) M=${MODEL:-resnet18} S=10 ;;
  c|d) M=${MODEL:-vgg16bn} S=20 ;;  # s per the paper's Table 3
  *)   echo "gpu_issue17.sh: PART must be a, b, c or d, not '$PART'" >&2; exit 2 ;;
esac
DATA=${DATA:-.data/train.tar.xz}
if [ ! -e "$DATA" ]; then
  echo "gpu_issue17.sh: DATA $DATA does not exist (carry .data with the tarball)" >&2
  exit 2
fi
PARALLEL=${PARALLEL:-3}
case "$PARALLEL" in
  [1-9]) ;;
  *) echo "gpu_issue17.sh: PARALLEL must be 1 to 9, not '$PARALLEL'" >&2; exit 2 ;;
esac
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-$(awk "BEGIN{print int(90/$PARALLEL)/100}")}
# Rows 4 and 7 need trainer features from other branches; PART a needs none.
HELP=
[ "$PART" = a ] || HELP=$("$PY" -m train --help 2>&1)
has_target() { grep -q -- "--target-ramp" <<<"$HELP"; }  # branch i15t
has_structure() { grep -q -- "--structure" <<<"$HELP" && grep -q "net-slim" <<<"$HELP"; }  # i16t
if [ "$PART" = d ] && ! has_structure; then
  echo "gpu_issue17.sh: PART d needs --structure channel and --method net-slim, which this trainer lacks" >&2
  exit 2
fi

R=${RUNS:-${OUT:-/tmp}/issue17}
E1=${E1:-70} E2=${E2:-30} DEBIAS=${DEBIAS:-15}
E=$((E1 + E2))
mkdir -p "$R/logs"
D=(--dataset folder --data-dir "$DATA" --val-fraction 0.1 --progress none
   --out "$R" --checkpoint-every 1000 --epochs "$E1" --asr-epochs "$E2")
RDA0=(--method rda --batch-size 128 --gamma 1)
RDA=("${RDA0[@]}" --l1 1e-4 --debias-epochs "$DEBIAS")
DENSE=(--batch-size 512 --lr 0.4 --lr-schedule onecycle)
WAVE=0

# Decode the tarball once, before runs side by side would each decode it.
t0=$(date +%s)
"$PY" -c 'import sys; from train import data
data.load("folder", data_dir=sys.argv[1], val_fraction=0.1, progress=False)' "$DATA" \
  || { echo "gpu_issue17.sh: could not read DATA $DATA" >&2; exit 2; }
echo "== data ready in $(( $(date +%s) - t0 )) s (cache $RDA_OPTAX_CACHE)" >&2

# launch NAME ARGS...: trains run NAME in the background, at most PARALLEL at
# once; a finished run of that name under RUNS is kept, not retrained.
launch() {
  local name=$1; shift
  if [ -f "$R/$name/summary.json" ]; then echo "== kept: $name" >&2; return; fi
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
  echo "== wave $WAVE: $name: $*" >&2
  (
    start=$(date +%s.%N)
    "$PY" -m train "${D[@]}" --run-name "$name" "$@" >"$R/logs/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\t%s\n' "$WAVE" "$name" "$start" "$(date +%s.%N)" "$rc" \
      >>"$R/timeline.tsv"
    if [ "$rc" != 0 ]; then
      echo "== failed ($rc): $name; the end of $R/logs/$name.log:" >&2
      tail -n 5 "$R/logs/$name.log" >&2
    else
      echo "== done: $name" >&2
    fi
  ) &
}
# wave: waits for the runs of the current wave, tabulates, starts the next.
wave() {
  wait
  [ "$WAVE" -gt 0 ] && "$PY" benchmarks/goals.py "$R" --no-plots \
      ${DENSE_TOP1:+--dense-top1 "$DENSE_TOP1"} >/dev/null 2>&1
  WAVE=$((WAVE + 1))
}

case "$PART" in
  a|c)
    wave
    launch "$M-sgd-$E" --model "$M" --method sgd "${DENSE[@]}"
    launch "$M-rda-debias$DEBIAS-$E" --model "$M" "${RDA[@]}" --init-scale "$S"
    wave
    FROM=(--target-sparsity-from "$R/$M-rda-debias$DEBIAS-$E")
    launch "$M-gmp-$E" --model "$M" --method gmp "${DENSE[@]}" "${FROM[@]}"
    if [ "$PART" = a ]; then
      launch "$M-rigl-$E" --model "$M" --method rigl "${DENSE[@]}" "${FROM[@]}"
    elif has_target; then  # row 5's dense seed 1 did not fit in PART b
      M5=${MODEL:-resnet18}
      launch "$M5-sgd-$E-s1" --model "$M5" --method sgd "${DENSE[@]}" --seed 1
    fi
    ;;
  b)
    wave
    if has_target; then
      for t in ${RDA_TARGETS:-0.95 0.98}; do
        launch "$M-rda-target$t-$E" --model "$M" "${RDA0[@]}" --init-scale "$S" \
          --target-sparsity "$t"
      done
    else
      echo "== skipped row 4: this trainer has no rda --target-sparsity (branch i15t)" >&2
      launch "$M-sgd-$E-s1" --model "$M" --method sgd "${DENSE[@]}" --seed 1
    fi
    launch "$M-rda-debias$DEBIAS-$E-s1" --model "$M" "${RDA[@]}" --init-scale "$S" --seed 1
    wave
    FROM=(--target-sparsity-from "$R/$M-rda-debias$DEBIAS-$E-s1")
    launch "$M-gmp-$E-s1" --model "$M" --method gmp "${DENSE[@]}" "${FROM[@]}" --seed 1
    launch "$M-rigl-$E-s1" --model "$M" --method rigl "${DENSE[@]}" "${FROM[@]}" --seed 1
    ;;
  d)
    wave
    launch "$M-rda-channel-$E" --model "$M" "${RDA0[@]}" --init-scale "$S" \
      --structure channel
    launch "$M-rda-sparse-group-$E" --model "$M" "${RDA0[@]}" --init-scale "$S" \
      --l1 1e-4 --structure sparse-group
    wave
    launch "$M-net-slim-$E" --model "$M" --method net-slim "${DENSE[@]}" \
      --target-flops-from "$R/$M-rda-channel-$E"
    ;;
esac
wait
"$PY" benchmarks/goals.py "$R" ${DENSE_TOP1:+--dense-top1 "$DENSE_TOP1"}
