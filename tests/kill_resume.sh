#!/usr/bin/env bash
# Kill a sweep with SIGKILL at several points, re-run the same command after each kill, and
# require the final results to equal an uninterrupted run's (every metric but the timings).
set -euo pipefail
build="$1"
source_dir="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# On any failure, say which command failed and show the last run's log.
trap 'echo "kill_and_resume: failed at line $LINENO: $BASH_COMMAND"; tail -20 "$work/log" 2>/dev/null' ERR
run=("$build/bin/inflab" run "$source_dir/experiments/quickstart.toml"
  --set 'sweep.model.lora.rank=[1, 2]' --set 'sweep.experiment.seed=[0, 1]'
  --set dataset.n_train=1500 --set dataset.n_pretrain=3000 --set training.epochs=12)
"${run[@]}" --out "$work/reference" --cache "$work/cache-reference" >"$work/log" 2>&1
# Each kill lands at a point the run reports in its log (not at a wall-clock offset, which on a
# slow or busy machine can fall before the first stage or after the last): the run is started,
# its log watched, and SIGKILL sent as soon as the log shows the point. A point is "A" or "A then B"
# (B after A). Base pretraining; fine-tuning of run 1 (the base is cached by then); the start of
# run 2; run 3 among its estimators; run 4 extracting gradients.
kill_at() {
  "${run[@]}" --out "$work/killed" --cache "$work/cache-killed" >"$work/killed.log" 2>&1 &
  local pid=$! reached=0
  while kill -0 "$pid" 2>/dev/null; do
    if awk -v a="$1" -v b="${2:-}" '$0 ~ a {seen = 1} seen && (b == "" || $0 ~ b) {hit = 1; exit}
      END {exit !hit}' "$work/killed.log"; then reached=1; break; fi
    sleep 0.02
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  finished=$( (find "$work/killed" -name metrics.csv 2>/dev/null || true) | wc -l)
  [ "$reached" = 1 ] || { echo "the run ended before it reported '$1${2:+ then $2}':"; tail -5 "$work/killed.log"; exit 1; }
  progress+=("'$1${2:+ then $2}':$finished")
}
progress=()
kill_at "pretraining base"
kill_at "fine-tuning LoRA"
kill_at "run 2/4"
kill_at "run 3/4" "kfac:"
kill_at "run 4/4" "train gradients"
echo "runs finished at each kill: ${progress[*]}"
[ "$finished" -lt 4 ] || { echo "the last kill came after the sweep finished"; exit 1; }
"${run[@]}" --out "$work/killed" --cache "$work/cache-killed" >"$work/log" 2>&1
runs=0
for reference in "$work"/reference/quickstart/*/metrics.csv; do
  name="$(basename "$(dirname "$reference")")"
  killed="$work/killed/quickstart/$name/metrics.csv"
  [ -f "$killed" ] || { echo "run $name missing after resuming"; exit 1; }
  if ! diff <(grep -v ',seconds,' "$reference") <(grep -v ',seconds,' "$killed") >/dev/null; then
    echo "run $name differs after kills and resume:"; diff <(grep -v ',seconds,' "$reference") <(grep -v ',seconds,' "$killed") || true
    exit 1
  fi
  cmp -s "$(dirname "$reference")/scores_datainf.npy" "$(dirname "$killed")/scores_datainf.npy" ||
    { echo "run $name: DataInf scores differ"; exit 1; }
  runs=$((runs + 1))
done
[ "$runs" -eq 4 ] || { echo "expected 4 runs, found $runs"; exit 1; }
# No file a reader could take for a result was left half-written.
if find "$work/killed" -name '*.tmp-*' | grep -q .; then echo "temporary files left in the results"; exit 1; fi
echo "killed 5 times at reported progress points, resumed: $runs runs equal to the uninterrupted sweep"
