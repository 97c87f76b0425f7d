#!/usr/bin/env bash
# Issue 17 on a device: RDA against dense, GMP and RigL, ResNet-18 and
# VGG-16bn, 100 epochs in all for every method (70 + 30 for the two-phase
# ones), CIFAR-10 JPEG tarball, validation split 10% (seed 0). Replaces
# scripts/gpu_issue5.sh. One PART per `run` call, in this order, which is
# issue 17's order of rows (in brackets); the runs of a wave share the GPU,
# side by side, at most PARALLEL at once:
#   PART=a  ResNet-18. Wave 1: dense SGD [1] | RDA + ASR, l1 = 0 for the last
#           DEBIAS ASR epochs [2]. Wave 2: GMP | RigL at the sparsity RDA
#           reached (--target-sparsity-from) [3], dense's recipe.
#   PART=b  ResNet-18, one wave: RDA --target-sparsity 0.95 | 0.98 [4]
#           (skipped with a line while the trainer lacks it) | RDA seed 1 |
#           dense seed 1 [5].
#   PART=c  ResNet-18: GMP | RigL seed 1 at RDA seed 1's sparsity [5]: that
#           run's directory under RUNS (PART b on the same machine), else
#           FROM_S1 (PART b's run brought back into the repo); exits 2 with a
#           line when neither has its summary.json.
#   PART=d  VGG-16bn [6]. Wave 1: dense | RDA + ASR + debias. Wave 2: GMP at
#           RDA's sparsity.
#   PART=e  VGG-16bn [7]. Wave 1: channel-group RDA (--structure channel) |
#           the same with --group-weighting uniform (lambda_g = UGROUP_L1
#           for every channel, so the FLOP-heavy first convs can go too) |
#           sparse-group RDA. Wave 2: network slimming at each channel
#           run's FLOPs.
#           Exits 2 with a line while the trainer lacks --structure/net-slim.
#   PART=f  ResNet-18, the proximal family (issue 24; issue 27 row 2): NEW
#           (default rmda) at step NEW_LR | RDA | global GMP, all at
#           --target-sparsity TARGET (default 0.95), seeds SEEDS (default
#           "0 1"); the target runs are debiased over all ASR epochs.
#   PART=g  VGG-16bn at TARGET (issue 27 row 3): RDA | global GMP, SEEDS.
#   PART=h  ResNet-18 dense with the usual recipe (issue 27 row 5): batch
#           128, lr 0.1, cosine, weight decay 5e-4, SEEDS.
#   PART=i  VGG-16bn, channel sparsity at FLOPS (default 0.5) of the dense
#           FLOPs (issue 25; issue 27 row 4): channel-group RDA and RMDA
#           (lambda_g chosen each step for the FLOPs) | network slimming at
#           the same --target-flops, SEEDS; every run trains its second
#           phase on the slim network. Then benchmarks/slim_latency.py on
#           each trained slim model, on the machine's CPU (RUNS/latency-*).
# Every run, seed 1 too, is scored on the same validation split (--val-seed 0).
# DRY=1 prints each run's flags (one line each, "== run NAME: FLAGS")
# instead of training, for a check of a PART before device time goes in.
#
# Device seconds, estimated on an H200 from the 100-epoch walls measured
# alone (RDA at batch 128, 47k img/s: 136 s; dense at batch 512, 80k img/s:
# 96 s; about 40 s of each is compilation and evaluation, which overlap
# when runs share the GPU), with no gain from sharing (the worst case):
# the tarball's first decode ~30-60 s on a fresh machine (then cached in
# RDA_OPTAX_CACHE), and
#   a: wave 1 ~210 s, wave 2 ~190 s: ~450-480 s;
#   b: 3 RDA + 1 dense ~390 s: ~420-450 s (~210 s + decode without row 4);
#   c: ~190 s (+ decode on a fresh machine);
#   d: VGG-16bn costs about half ResNet-18's FLOPs: ~250-350 s;
#   e: ~350-420 s.
# How to run it and what comes back: docs/RESULTS.md, "Issue 17 on a device".
#
# Every run writes its directory under RUNS (default /tmp/issue17) with the
# trainer's log in RUNS/logs/ and one line per finished run in
# RUNS/timeline.tsv (waves named a1, a2, b1...). After each wave,
# benchmarks/goals.py rewrites RUNS/goals.md and, when OUT is set, RUNS
# (checkpoints and exported models left out) is packed into
# $OUT/issue17-$PART.tar.gz, with a copy of goals.md as $OUT/goals-$PART.md:
# the device returns at most 8 files from $OUT, so run directories there
# would not come back whole, and a call stopped at its limit still returns
# the waves it finished. At the end goals.py prints the goals table (gap to
# dense, goal 1, RDA against GMP/RigL at equal sparsity, goal 2) and the
# speed tables (per-run median img/s, total img/s per wave side by side).
#
# Overrides (tests/test_gpu_script.py runs PART=a on CPU with a tiny tarball):
# DATA (default .data/train.tar.xz), MODEL (every part's model), E1 + E2
# (phase epochs, default 70 + 30), DEBIAS (default 15), RDA_TARGETS (default
# "0.95 0.98"), PARALLEL (runs at once in a wave, default 3; 1 runs them one
# by one, the alone baseline), MEM_FRACTION (GPU memory per process, default
# 0.9 / PARALLEL), RUNS, PYTHON, FROM_S1 (PART c), GROUP_L1 (PART e; default
# the trainer's), UGROUP_L1 (PART e's uniform run, default 0.02: its
# protection time (1/0.02)^2 = 2,500 steps is 10% of 70 epochs at batch 128), DENSE_TOP1 (for goals.py when RUNS holds no dense run of a
# model, as in PARTs c and e on a fresh machine; or rerun goals.py here over
# every part brought back), GMP_GLOBAL (set to 1: every GMP wave also runs
# GMP with --sparsity-distribution global, the stronger GMP on the CIFAR-10
# small CNN (docs/RESULTS.md); a third run in the wave, about +50% on that
# wave's time when the GPU is already full).
set -u
# In braces, so bash reads the whole script before it runs: editing the file
# (a checkout, a merge) while a part runs cannot change what it runs.
{
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
export RDA_OPTAX_CACHE=${RDA_OPTAX_CACHE:-/tmp/rda-cache}
PY=${PYTHON:-python3}
PART=${PART:-a}
case "$PART" in
  a|b|c|f|h) M=${MODEL:-resnet18} S=10 ;;
  d|e|g|i)   M=${MODEL:-vgg16bn} S=20 ;;  # s per the paper's Table 3
  *)     echo "gpu_issue17.sh: PART must be a, b, c, d, e, f, g, h or i, not '$PART'" >&2; exit 2 ;;
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
# Rows 4 and 7 (PARTs b, e) need trainer features from other branches.
HELP=
case "$PART" in b|e) HELP=$("$PY" -m train --help 2>&1) ;; esac
has_target() { grep -q -- "--target-ramp" <<<"$HELP"; }  # branch i15t
has_structure() { grep -q -- "--structure" <<<"$HELP" && grep -q "net-slim" <<<"$HELP"; }  # i16t
if [ "$PART" = e ] && ! has_structure; then
  echo "gpu_issue17.sh: PART e needs --structure channel and --method net-slim, which this trainer lacks" >&2
  exit 2
fi

R=${RUNS:-/tmp/issue17}
E1=${E1:-70} E2=${E2:-30} DEBIAS=${DEBIAS:-15}
E=$((E1 + E2))
S1=$R/$M-rda-debias$DEBIAS-$E-s1
[ -f "$S1/summary.json" ] || S1=${FROM_S1:-$S1}
if [ "$PART" = c ] && [ ! -f "$S1/summary.json" ]; then
  echo "gpu_issue17.sh: PART c needs RDA seed 1's run (PART b): no $S1/summary.json; set FROM_S1" >&2
  exit 2
fi
GMP_GLOBAL=${GMP_GLOBAL:-}
mkdir -p "$R/logs"
D=(--dataset folder --data-dir "$DATA" --val-fraction 0.1 --val-seed 0
   --progress none --out "$R" --checkpoint-every 1000 --epochs "$E1" --asr-epochs "$E2")
RDA0=(--method rda --batch-size 128 --gamma 1)
RDA=("${RDA0[@]}" --l1 1e-4 --debias-epochs "$DEBIAS")
DENSE=(--batch-size 512 --lr 0.4 --lr-schedule onecycle)
WAVE=0

# Decode the tarball once, before runs side by side would each decode it.
if [ -z "${DRY:-}" ]; then
  t0=$(date +%s)
  "$PY" -c 'import sys; from train import data
data.load("folder", data_dir=sys.argv[1], val_fraction=0.1, progress=False)' "$DATA" \
    || { echo "gpu_issue17.sh: could not read DATA $DATA" >&2; exit 2; }
  echo "== data ready in $(( $(date +%s) - t0 )) s (cache $RDA_OPTAX_CACHE)" >&2
fi

# launch NAME ARGS...: trains run NAME in the background, at most PARALLEL at
# once; a finished run of that name under RUNS is kept, not retrained.
launch() {
  local name=$1; shift
  if [ -n "${DRY:-}" ]; then echo "== run $name: $*"; return; fi
  if [ -f "$R/$name/summary.json" ]; then echo "== kept: $name" >&2; return; fi
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
  echo "== wave $PART$WAVE: $name: $*" >&2
  (
    start=$(date +%s.%N)
    "$PY" -m train "${D[@]}" --run-name "$name" "$@" >"$R/logs/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\t%s\n' "$PART$WAVE" "$name" "$start" "$(date +%s.%N)" "$rc" \
      >>"$R/timeline.tsv"
    if [ "$rc" != 0 ]; then
      echo "== failed ($rc): $name; the end of $R/logs/$name.log:" >&2
      tail -n 5 "$R/logs/$name.log" >&2
    else
      echo "== done: $name" >&2
    fi
  ) &
}
# pack: what comes back from the device, when OUT is set.
pack() {
  [ -n "${OUT:-}" ] || return 0
  tar -czf "$OUT/issue17-$PART.tar.gz" -C "$R" --exclude=checkpoints \
    --exclude='*.msgpack' . && { [ ! -f "$R/goals.md" ] || cp "$R/goals.md" "$OUT/goals-$PART.md"; }
}
# wave: waits for the runs of the current wave, tabulates, packs, starts the
# next.
wave() {
  wait
  [ -z "${DRY:-}" ] || return 0
  if [ "$WAVE" -gt 0 ]; then
    "$PY" benchmarks/goals.py "$R" --no-plots \
      ${DENSE_TOP1:+--dense-top1 "$DENSE_TOP1"} >/dev/null 2>&1
    pack
  fi
  WAVE=$((WAVE + 1))
}

case "$PART" in
  a|d)
    wave
    launch "$M-sgd-$E" --model "$M" --method sgd "${DENSE[@]}"
    launch "$M-rda-debias$DEBIAS-$E" --model "$M" "${RDA[@]}" --init-scale "$S"
    wave
    FROM=(--target-sparsity-from "$R/$M-rda-debias$DEBIAS-$E")
    launch "$M-gmp-$E" --model "$M" --method gmp "${DENSE[@]}" "${FROM[@]}"
    [ -z "$GMP_GLOBAL" ] || launch "$M-gmp-global-$E" --model "$M" --method gmp \
      "${DENSE[@]}" "${FROM[@]}" --sparsity-distribution global
    [ "$PART" = d ] ||
      launch "$M-rigl-$E" --model "$M" --method rigl "${DENSE[@]}" "${FROM[@]}"
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
    fi
    launch "$M-rda-debias$DEBIAS-$E-s1" --model "$M" "${RDA[@]}" --init-scale "$S" --seed 1
    launch "$M-sgd-$E-s1" --model "$M" --method sgd "${DENSE[@]}" --seed 1
    ;;
  c)
    wave
    FROM=(--target-sparsity-from "$S1")
    launch "$M-gmp-$E-s1" --model "$M" --method gmp "${DENSE[@]}" "${FROM[@]}" --seed 1
    [ -z "$GMP_GLOBAL" ] || launch "$M-gmp-global-$E-s1" --model "$M" --method gmp \
      "${DENSE[@]}" "${FROM[@]}" --sparsity-distribution global --seed 1
    launch "$M-rigl-$E-s1" --model "$M" --method rigl "${DENSE[@]}" "${FROM[@]}" --seed 1
    ;;
  e)
    wave
    launch "$M-rda-channel-$E" --model "$M" "${RDA0[@]}" --init-scale "$S" \
      --structure channel ${GROUP_L1:+--group-l1 "$GROUP_L1"}
    launch "$M-rda-uchannel-$E" --model "$M" "${RDA0[@]}" --init-scale "$S" \
      --structure channel --group-weighting uniform --group-l1 "${UGROUP_L1:-0.02}"
    launch "$M-rda-sparse-group-$E" --model "$M" "${RDA0[@]}" --init-scale "$S" \
      --l1 1e-4 --structure sparse-group ${GROUP_L1:+--group-l1 "$GROUP_L1"}
    wave
    launch "$M-net-slim-$E" --model "$M" --method net-slim "${DENSE[@]}" \
      --target-flops-from "$R/$M-rda-channel-$E"
    launch "$M-net-slim-u-$E" --model "$M" --method net-slim "${DENSE[@]}" \
      --target-flops-from "$R/$M-rda-uchannel-$E"
    ;;
  f|g)
    wave
    T=(--target-sparsity "${TARGET:-0.95}")
    for seed in ${SEEDS:-0 1}; do
      [ "$PART" = g ] || launch "$M-${NEW:-rmda}-target${TARGET:-0.95}-$E-s$seed" \
        --model "$M" --method "${NEW:-rmda}" --batch-size 128 \
        --lr "${NEW_LR:-0.1}" "${T[@]}" --seed "$seed"
      launch "$M-rda-target${TARGET:-0.95}-$E-s$seed" --model "$M" "${RDA0[@]}" \
        --init-scale "$S" "${T[@]}" --seed "$seed"
      launch "$M-gmp-global-target${TARGET:-0.95}-$E-s$seed" --model "$M" \
        --method gmp "${DENSE[@]}" "${T[@]}" --sparsity-distribution global \
        --seed "$seed"
    done
    ;;
  i)
    wave
    F=(--target-flops "${FLOPS:-0.5}")
    for seed in ${SEEDS:-0 1}; do
      launch "$M-rda-channel-flops${FLOPS:-0.5}-$E-s$seed" --model "$M" \
        "${RDA0[@]}" --init-scale "$S" --structure channel "${F[@]}" --seed "$seed"
      launch "$M-rmda-channel-flops${FLOPS:-0.5}-$E-s$seed" --model "$M" \
        --method rmda --batch-size 128 --lr "${NEW_LR:-0.1}" \
        --structure channel "${F[@]}" --seed "$seed"
      launch "$M-net-slim-flops${FLOPS:-0.5}-$E-s$seed" --model "$M" \
        --method net-slim "${DENSE[@]}" "${F[@]}" --seed "$seed"
    done
    wave
    for d in "$R"/"$M"-*-flops*; do
      [ -f "$d/summary.json" ] || continue
      JAX_PLATFORMS=cpu "$PY" benchmarks/slim_latency.py --run-dir "$d" \
        >"$R/latency-$(basename "$d").txt" 2>&1
    done
    ;;
  h)
    wave
    for seed in ${SEEDS:-0 1}; do
      launch "$M-sgd-std-$E-s$seed" --model "$M" --method sgd --batch-size 128 \
        --lr 0.1 --lr-schedule cosine --weight-decay 5e-4 --seed "$seed"
    done
    ;;
esac
[ -z "${DRY:-}" ] || exit 0
wait
"$PY" benchmarks/goals.py "$R" ${DENSE_TOP1:+--dense-top1 "$DENSE_TOP1"}
rc=$?
pack
exit $rc
}
