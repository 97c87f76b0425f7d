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
      tests/test_export.py tests/test_conformance.py"
    # Whole training runs: minutes per surviving mutant on 2 cores, and
    # the unit tests above check the same code paths.
    deselect="tests/test_composition.py::test_scaled_uniform_init_trains
      tests/test_composition.py::test_proposition_1_zero_init_never_moves
      tests/test_export.py::test_export_then_evaluate_gives_the_runs_test_top1
      tests/test_export.py::test_export_evaluate_bad_input_one_line_exit_2" ;;
  trainer)
    sources=${ONLY:-train/engine.py train/optim.py train/prune.py train/parallel.py}
    tests="tests/test_evaluate.py tests/test_augment.py
      tests/test_logged_values.py tests/test_accelerator_defaults.py
      tests/test_train.py"
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
if [ -n "${SAMPLE:-}" ]; then
  # mutmut cannot sample: a first run that matches no mutant writes them all
  # (and the tests' coverage), then a uniform random sample of their names
  # runs. Its score estimates the whole set's; a full pass needs hours here.
  "$mutmut" run --max-children "${JOBS:-2}" "no-such-mutant" > /dev/null 2>&1 || true
  mapfile -t names < <("$py" - "$SAMPLE" "${SAMPLE_SEED:-0}" <<'PY'
import json, pathlib, random, sys
keys = sorted(k for m in pathlib.Path("mutants").rglob("*.meta")
              for k in json.loads(m.read_text())["exit_code_by_key"])
n, seed = int(sys.argv[1]), int(sys.argv[2])
print("\n".join(sorted(random.Random(seed).sample(keys, min(n, len(keys))))))
print(f"mutate.sh: sampled {min(n, len(keys))} of {len(keys)} mutants "
      f"(seed {seed})", file=sys.stderr)
PY
)
fi
timeout "${MUTATE_TIMEOUT:-1200}" "$mutmut" run --max-children "${JOBS:-2}" \
  "${names[@]}" || echo "mutate.sh: mutmut stopped (exit $?); results so far:" >&2
"$mutmut" results --all true > results.txt 2>&1 || true
if [ ${#names[@]} -gt 0 ]; then  # only the sample
  printf '%s\n' "${names[@]}" | sed 's/$/:/' > sample.txt
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
