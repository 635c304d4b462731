#!/usr/bin/env bash
# Smoke test of every study in experiments/paper/: each runs at tiny sizes with two LoRA ranks
# (its sweep and repeats replaced), then `report` must summarise them and draw the figures. Guards the
# studies against silent breakage; the real runs are experiments, not tests.
set -euo pipefail
build="$1"
source_dir="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for file in "$source_dir"/experiments/paper/*.toml; do
  if grep -q 'plugin = "generation_tasks"' "$file"; then
    # The LLM studies: 2 training and 1 test instruction per class, adapters on two layers only.
    sizes=(--set dataset.train_per_class=2 --set dataset.test_per_class=1
      --set 'model.lora.targets=["blk.0.attn_q", "blk.29.attn_v"]')
  elif grep -q 'plugin = "paper_generation_tasks"' "$file"; then
    # The paper's own text data: its protocol (prompt loss, scored padding), 2 + 1 examples per class.
    sizes=(--set dataset.train_per_class=2 --set dataset.test_per_class=1 --set task.scored=prompt
      --set task.padding=longest --set 'model.lora.targets=["blk.0.attn_q", "blk.29.attn_v"]')
  elif grep -Eq 'plugin = "styled_(digits|fashion)"' "$file"; then
    # The diffusion studies: 3 images per class, a one-epoch base, 2 generated queries per class.
    sizes=(--set dataset.train_per_class=3 --set dataset.test_per_class=1 --set dataset.n_pretrain=40
      --set training.pretrain_epochs=1 --set queries.generated_per_class=2 --set queries.sampling_steps=3)
  else
    sizes=(--set 'sweep.model.lora.rank=[2, 4]' --set dataset.n_train=40 --set dataset.n_validation=12
      --set dataset.n_pretrain=48 --set training.pretrain_epochs=1)
    grep -q 'plugin = "minilm_lora"' "$file" && sizes+=(--set model.max_length=24)
    grep -q '^\[ground_truth\]' "$file" && sizes+=(--set ground_truth.subsets=5)
    grep -q '^\[leave_one_out\]' "$file" && sizes+=(--set leave_one_out.examples=2 --set leave_one_out.repeats=1)
  fi
  # One epoch holds one checkpoint (TracIn's [checkpoints] keeps at most one per epoch).
  if grep -q '^\[checkpoints\]' "$file"; then sizes+=(--set checkpoints.count=1); fi
  "$build/bin/inflab" --quiet run "$file" --out "$work/results" --cache "$work/cache" \
    --set 'sweep={}' --set experiment.repeats=1 --set training.epochs=1 "${sizes[@]}" >"$work/out.txt" 2>&1 ||
    { echo "FAILED: $file"; cat "$work/out.txt"; exit 1; }
  echo "ok: $(basename "$file")"
done
# `generate --lora RUN_DIR` rebuilds the run's fine-tuned model from the cache: its greedy answer to
# a test prompt must be the one the run recorded (which may stop earlier: a prefix).
run_dir="$work/results/class_detection_llm_math/run"
prompt=$(/usr/bin/python3 -c 'import json, sys
print([r for r in map(json.loads, open(sys.argv[1])) if "answer" in r][0]["text"])' "$run_dir/examples.jsonl")
"$build/bin/inflab" generate --lora "$run_dir" --cache "$work/cache" --prompt "$prompt" --json \
  --logits "$work/tuned.npy" >"$work/answer.json" 2>"$work/generate.log"
# ... from the cache, on the run's kernels (pinned), not fine-tuned again on this processor's own.
! grep -q "fine-tuning" "$work/generate.log" || { cat "$work/generate.log"; echo "generate --lora fine-tuned again"; exit 1; }
"$build/bin/inflab" --quiet generate --prompt "$prompt" --max-tokens 1 --logits "$work/base.npy" >/dev/null
/usr/bin/python3 - "$run_dir/examples.jsonl" "$work/answer.json" "$work/tuned.npy" "$work/base.npy" <<'PY'
import json, sys
import numpy as np
change = np.abs(np.load(sys.argv[3]) - np.load(sys.argv[4])).max()
assert change > 1e-3, f"--lora left the logits as the base model's (largest change {change})"
recorded = [r for r in map(json.loads, open(sys.argv[1])) if "answer" in r][0]["answer"]
generated = json.load(open(sys.argv[2]))["text"]
assert generated.startswith(recorded), f"generate --lora answered {generated!r}; the run recorded {recorded!r}"
print(f"ok: generate --lora reproduces the run's answer {recorded!r}")
PY
# The thread count is part of the adapter's key: without --threads or $INFLAB_THREADS, generate
# takes a one-thread run's count (the default would be every core) and finds its adapter.
"$build/bin/inflab" --quiet --threads 1 run "$source_dir/experiments/paper/class_detection_llm_math.toml" \
  --out "$work/one_thread" --cache "$work/cache" --set 'sweep={}' --set training.epochs=1 \
  --set dataset.train_per_class=2 --set dataset.test_per_class=1 --set checkpoints.count=1 \
  --set 'model.lora.targets=["blk.0.attn_q", "blk.29.attn_v"]' --set 'estimator=[{plugin = "hessian_free"}]' \
  >"$work/out.txt" 2>&1 || { cat "$work/out.txt"; exit 1; }
env -u INFLAB_THREADS "$build/bin/inflab" generate --lora "$work/one_thread/class_detection_llm_math/run" \
  --cache "$work/cache" --prompt "$prompt" --max-tokens 2 >/dev/null 2>"$work/generate.log"
grep -q "1 thread(s), as" "$work/generate.log" && ! grep -q "fine-tuning" "$work/generate.log" ||
  { cat "$work/generate.log"; echo "generate --lora did not reuse a one-thread run's adapter"; exit 1; }
INFLAB_THREADS=2 "$build/bin/inflab" generate --lora "$work/one_thread/class_detection_llm_math/run" \
  --cache "$work/cache" --prompt "$prompt" --max-tokens 2 >/dev/null 2>"$work/generate.log"
grep -q "fine-tuned on 1 thread(s) and this process uses 2" "$work/generate.log" ||
  { cat "$work/generate.log"; echo "no warning for another thread count"; exit 1; }
echo "ok: generate --lora reuses the run's adapter on its kernels and thread count, warns on another count"
/usr/bin/python3 "$source_dir/framework/report/report.py" "$work/results"
for figure in fig1_correlation_vs_rank fig2_auc_rank4 fig2b_auc_vs_rank fig4_lissa_variants fig5_class_detection; do
  [ -s "$work/results/figures/$figure.png" ] || { echo "missing figure $figure"; exit 1; }
done
grep -q "^fashion_mlp,4,40,datainf,auc," "$work/results/summary.csv" || { echo "summary.csv lacks a row"; head "$work/results/summary.csv"; exit 1; }
grep -q "^class_detection_llm_transformations,8,20,datainf,class_auc," "$work/results/summary.csv" ||
  { echo "summary.csv lacks the LLM class-detection row"; grep class_detection "$work/results/summary.csv"; exit 1; }
grep -q "^ground_truth_fashion_mlp,2,40,datainf,lds," "$work/results/summary.csv" ||
  { echo "summary.csv lacks the LDS row"; grep lds "$work/results/summary.csv"; exit 1; }
[ -s "$work/results/figures/fig6_lds.png" ] || { echo "missing figure fig6_lds"; exit 1; }
grep -q "^ground_truth_fashion_mlp,2,40,datainf,loo," "$work/results/summary.csv" ||
  { echo "summary.csv lacks the leave-one-out row"; grep loo "$work/results/summary.csv"; exit 1; }
[ -s "$work/results/class_detection_diffusion_style/run/queries.png" ] || { echo "no generated queries"; exit 1; }
grep -q "^class_detection_diffusion_style/run,5-NN on the run's training images,6," "$work/results/generated_images.csv" ||
  { echo "generated_images.csv lacks the style run"; cat "$work/results/generated_images.csv"; exit 1; }
grep -q "^class_detection_diffusion_fashion_subject/run,Fashion-MNIST CNN (judge.py),6," "$work/results/generated_images.csv" ||
  { echo "generated_images.csv lacks the clothing subject run, judged by the CNN"; cat "$work/results/generated_images.csv"; exit 1; }
# Clothing runs' Frechet distance and its real floor (the CNN's features): two positive numbers at the row's end.
for experiment in class_detection_diffusion_fashion_subject class_detection_diffusion_fashion_style; do
  awk -F, -v run="$experiment/run" '$1 == run && $(NF-1) > 0 && $NF > 0 { found = 1 } END { exit !found }' \
    "$work/results/generated_images.csv" ||
    { echo "generated_images.csv lacks $experiment's Frechet distances"; cat "$work/results/generated_images.csv"; exit 1; }
done
[ -s "$work/results/figures/fig8_influential_class_detection_diffusion_style.png" ] ||
  { echo "missing figure fig8 (a generated image with its most and least helpful training images)"; exit 1; }
grep -q "^class_detection_llm_math,datainf,1,10," "$work/results/class_detection.csv" ||
  { echo "class_detection.csv lacks the math row"; cat "$work/results/class_detection.csv"; exit 1; }
grep -q "^class_detection_llm_paper_protocol_math,datainf,1,10," "$work/results/class_detection.csv" ||
  { echo "class_detection.csv lacks the paper-protocol row"; cat "$work/results/class_detection.csv"; exit 1; }
echo "paper studies smoke: ok"
