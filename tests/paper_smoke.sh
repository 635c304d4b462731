#!/usr/bin/env bash
# Smoke test of every study in experiments/paper/: each runs at tiny sizes with two LoRA ranks
# (its sweep replaced), then `report` must summarise them and draw the figures. Guards the
# studies against silent breakage; the real runs are experiments, not tests.
set -euo pipefail
build="$1"
source_dir="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for file in "$source_dir"/experiments/paper/*.toml; do
  extra=()
  grep -q 'plugin = "minilm_lora"' "$file" && extra=(--set model.max_length=24)
  "$build/bin/inflab" --quiet run "$file" --out "$work/results" --cache "$work/cache" \
    --set 'sweep={}' --set 'sweep.model.lora.rank=[2, 4]' \
    --set dataset.n_train=40 --set dataset.n_validation=12 --set dataset.n_pretrain=48 \
    --set training.epochs=1 --set training.pretrain_epochs=1 "${extra[@]}" >"$work/out.txt" 2>&1 ||
    { echo "FAILED: $file"; cat "$work/out.txt"; exit 1; }
  echo "ok: $(basename "$file")"
done
/usr/bin/python3 "$source_dir/framework/report/report.py" "$work/results"
for figure in fig1_correlation_vs_rank fig2_auc_rank4 fig2b_auc_vs_rank fig4_lissa_variants; do
  [ -s "$work/results/figures/$figure.png" ] || { echo "missing figure $figure"; exit 1; }
done
grep -q "^fashion_mlp,4,40,datainf,auc," "$work/results/summary.csv" || { echo "summary.csv lacks a row"; head "$work/results/summary.csv"; exit 1; }
echo "paper studies smoke: ok"
