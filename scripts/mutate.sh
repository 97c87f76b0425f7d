#!/usr/bin/env bash
# Mutation testing with mutmut (pip install -e '.[mutate]'), outside `make test`.
#
#   scripts/mutate.sh lib      rda_optax/ against the library tests
#   scripts/mutate.sh trainer  the trainer's evaluation, augmentation,
#                              schedules, pruning and sharding code against
#                              the tests of those behaviours
#   ONLY="rda_optax/_rda.py rda_optax/_asr.py" scripts/mutate.sh lib
#                              a subset of the modules
#   SAMPLE=300 SAMPLE_SEED=0 scripts/mutate.sh lib
#                              a uniform random sample of the mutants
#   MUTATE_DIR=/tmp/m SAMPLE=300 scripts/mutate.sh lib
#                              resume a sample in the same scratch directory:
#                              mutants already killed there are not rerun
#   MUTANTS="name1 name2" scripts/mutate.sh trainer
#                              only these mutants (e.g. a pass's survivors)
#
# Works in a scratch copy of the tree (mutmut writes mutants/ next to the
# code), so the checkout stays clean. MUTATE_TIMEOUT (seconds, default 1200)
# bounds the run; a run cut short reports the mutants it got to. Prints
# mutmut's per-mutant results and the score: killed / (killed + survived).
set -euo pipefail
target=${1:-lib}
root=$(cd "$(dirname "$0")/.." && pwd)
# Absolute (the run happens in the scratch copy) but not resolved: a venv's
# python is a link out of the venv, and mutmut sits beside the link.
absolute() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
py=$(absolute "$(command -v "${PYTHON:-python}")")
mutmut=$(absolute "${MUTMUT:-$(dirname "$py")/mutmut}")
work=${MUTATE_DIR:-$(mktemp -d /tmp/rda-mutate.XXXXXX)}
case $target in
  lib)
    sources=${ONLY:-rda_optax/}
    tests="tests/test_rda.py tests/test_asr.py tests/test_prox_sgd.py
      tests/test_soft_threshold.py tests/test_sparsity.py tests/test_init.py
      tests/test_composition.py tests/test_convex.py tests/test_strengthened.py
      tests/test_gmp.py tests/test_rigl.py tests/test_group.py
      tests/test_target_sparsity.py tests/test_allocation.py
      tests/test_export.py tests/test_conformance.py
      tests/test_prox_family.py tests/test_hyperparams.py tests/test_bn_l1.py
      tests/test_reliability_lib.py tests/test_export_hostile.py"
    # Whole training runs (minutes per surviving mutant on 2 cores; the unit
    # tests above check the same code paths) and the docstring examples
    # (they only run the examples). Leaving tests out can only lower the
    # score.
    deselect="tests/test_composition.py::test_scaled_uniform_init_trains
      tests/test_composition.py::test_proposition_1_zero_init_never_moves
      tests/test_conformance.py::test_docstring_examples_run
      tests/test_rigl.py::test_docstring_examples
      tests/test_gmp.py::test_docstring_examples
      tests/test_export.py::test_export_then_evaluate_gives_the_runs_test_top1
      tests/test_export.py::test_export_evaluate_bad_input_one_line_exit_2" ;;
  trainer)
    sources=${ONLY:-train/engine.py train/optim.py train/prune.py train/parallel.py}
    # test_reliability's launch checks run in-process and stop before
    # training, its non-finite tests run compiled epochs directly. The
    # multi-device tests (test_scaling, test_multiprocess) run the trainer in
    # subprocesses, which mutmut cannot attribute to the code they run.
    tests="tests/test_evaluate.py tests/test_augment.py
      tests/test_logged_values.py tests/test_accelerator_defaults.py
      tests/test_train.py tests/test_target_train.py tests/test_parallel.py
      tests/test_reliability.py::test_bad_launch_is_refused_before_anything_is_written
      tests/test_reliability.py::test_unreachable_coordinator_times_out_with_one_line
      tests/test_reliability.py::test_nonfinite_steps_are_skipped_and_leave_no_trace
      tests/test_reliability.py::test_nonfinite_halt_is_per_step_and_state_stays_the_last_good_one"
    deselect="" ;;
  *) echo "mutate.sh: target must be lib or trainer, not '$target'" >&2; exit 2 ;;
esac
mkdir -p "$work"
tar -C "$root" --exclude=.git --exclude=.venv --exclude=runs --exclude=mutants \
  --exclude=__pycache__ -cf - . | tar -C "$work" -xf -
toml_list() { printf '['; printf '"%s",' "$@" | sed 's/,$//'; printf ']'; }
# shellcheck disable=SC2086
{
  echo
  echo "[tool.mutmut]"
  echo "source_paths = $(toml_list $sources)"
  echo "pytest_add_cli_args_test_selection = $(toml_list $tests)"
  args="-q -x -p no:cacheprovider"
  for d in $deselect; do args="$args --deselect $d"; done
  echo "pytest_add_cli_args = $(toml_list $args)"
  echo "also_copy = [\"rda_optax/\", \"train/\", \"models/\", \"benchmarks/\", \"scripts/\"]"
  # JAX's threads do not survive a fork of a process that has used it: each
  # mutant's tests run in a child of a server that has only imported the
  # libraries (importing starts no backend).
  echo "process_isolation = \"forkserver\""
  echo "forkserver_warmup = \"import\""
  echo "preload_modules_file = \"preload.txt\""
} >> "$work/pyproject.toml"
printf '%s\n' numpy jax jax.numpy optax chex hypothesis flax.linen pytest sklearn.linear_model \
  > "$work/preload.txt"
cd "$work"
echo "mutate.sh: $target in $work: ${sources//$'\n'/ }" >&2
export PYTHONPATH=. JAX_PLATFORMS=cpu
names=()
if [ -n "${SAMPLE:-}${MUTANTS:-}" ]; then
  # A first run that matches no mutant writes them all (and the tests'
  # coverage), so that mutants can be named. sample.txt lists the ones the
  # score counts.
  "$mutmut" run --max-children "${JOBS:-2}" "no-such-mutant" > /dev/null 2>&1 || true
fi
if [ -n "${MUTANTS:-}" ]; then
  read -r -a names <<< "$MUTANTS"
  printf '%s:\n' "${names[@]}" > sample.txt
elif [ -n "${SAMPLE:-}" ]; then
  # mutmut cannot sample: a uniform random sample of every mutant's name.
  # Its score estimates the whole set's; a full pass needs hours here. The
  # sample's mutants a resumed directory has already killed are counted but
  # not run again (mutmut reruns any mutant it is given by name).
  mapfile -t names < <("$py" - "$SAMPLE" "${SAMPLE_SEED:-0}" <<'PY'
import json, pathlib, random, sys
codes = {k: v for m in pathlib.Path("mutants").rglob("*.meta")
         for k, v in json.loads(m.read_text())["exit_code_by_key"].items()}
n, seed = int(sys.argv[1]), int(sys.argv[2])
sample = sorted(random.Random(seed).sample(sorted(codes), min(n, len(codes))))
pathlib.Path("sample.txt").write_text("".join(k + ":\n" for k in sample))
todo = [k for k in sample if codes[k] not in (1, 3)]  # 1, 3: mutmut's "killed"
if todo:
    print("\n".join(todo))
print(f"mutate.sh: sampled {len(sample)} of {len(codes)} mutants (seed {seed}); "
      f"{len(sample) - len(todo)} already killed here", file=sys.stderr)
PY
)
fi
if [ -z "${SAMPLE:-}${MUTANTS:-}" ] || [ ${#names[@]} -gt 0 ]; then
  timeout "${MUTATE_TIMEOUT:-1200}" "$mutmut" run --max-children "${JOBS:-2}" \
    "${names[@]}" || echo "mutate.sh: mutmut stopped (exit $?); results so far:" >&2
fi
"$mutmut" results --all true > results.txt 2>&1 || true
if [ -n "${SAMPLE:-}${MUTANTS:-}" ]; then  # only the mutants sample.txt lists
  grep -F -f sample.txt results.txt > r.txt || true
  mv r.txt results.txt
fi
killed=$(grep -c ': killed' results.txt || true)
survived=$(grep -c ': survived' results.txt || true)
other=$(grep -vc -e ': killed' -e ': survived' results.txt || true)
grep -v ': killed' results.txt || true
total=$((killed + survived))
echo "mutate.sh: $target: $killed killed, $survived survived, $other other" \
  "(not run, timeout, suspicious); score $(( total ? 100 * killed / total : 0 ))%"
