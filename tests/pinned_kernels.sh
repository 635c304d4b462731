#!/usr/bin/env bash
# Pinned kernels give the same numbers whatever the processor would choose (issue 24): a short
# quickstart under OpenBLAS's SkylakeX kernels (what an AVX-512 processor picks) and under its
# Haswell kernels (what an AVX2 processor picks) must give bit-identical scores in pinned mode,
# while native mode really runs the forced kernels and records them. Then one thread vs two for
# the MLP, the LLM (SmolLM2) and the denoiser's gradients, a finished run refused under other
# kernels, and manifests naming the kernels. Skips the forced-core part (exit 77 only if nothing
# else ran) where the processor cannot run AVX-512 kernels.
set -euo pipefail
build="${1:?usage: pinned_kernels.sh BUILD_DIR SOURCE_DIR}"
src="${2:?}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
inflab="$build/bin/inflab"
small=(--set dataset.n_train=300 --set dataset.n_validation=60 --set dataset.n_pretrain=600
  --set training.epochs=2 --set training.pretrain_epochs=1 --set 'model.hidden=[32]')
fail() { echo "pinned_kernels: $*" >&2; exit 1; }

# quickstart NAME [--kernels MODE] [--threads N] [env VAR=VALUE ...]: a short run on its own cache.
quickstart() {
  local name="$1" kernels=() threads=(--threads 2)
  shift
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --kernels) kernels=(--kernels "$2"); shift 2 ;;
      --threads) threads=(--threads "$2"); shift 2 ;;
      *) break ;;
    esac
  done
  env "$@" "$inflab" --quiet "${threads[@]}" "${kernels[@]}" run "$src/experiments/quickstart.toml" \
    --out "$work/$name" --cache "$work/cache-$name" "${small[@]}" >"$work/$name.txt" 2>&1 ||
    { cat "$work/$name.txt"; fail "run $name failed"; }
}
scores() { find "$work/$1" -name '*.npy' | sort; }
same_scores() {  # same_scores A B: every score file of run A equals run B's, byte for byte
  local a b count=0
  while read -r a; do
    b="$work/$2/${a#"$work/$1/"}"
    cmp -s "$a" "$b" || return 1
    count=$((count + 1))
  done < <(scores "$1")
  [ "$count" -gt 0 ] || fail "run $1 wrote no score files"
}
manifest_field() {  # manifest_field RUN FIELD: numerics.FIELD of the run's manifest
  /usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["numerics"][sys.argv[2]])' \
    "$(find "$work/$1" -name manifest.json | head -1)" "$2"
}

if grep -qw avx512f /proc/cpuinfo && grep -qw avx2 /proc/cpuinfo; then
  quickstart pinned_as_skylakex env OPENBLAS_CORETYPE=SkylakeX
  quickstart pinned_as_haswell env OPENBLAS_CORETYPE=Haswell
  quickstart native_skylakex --kernels native env OPENBLAS_CORETYPE=SkylakeX
  [ "$(manifest_field native_skylakex blas_kernel)" = SkylakeX ] ||
    fail "native mode did not run the SkylakeX kernels it was given ($(manifest_field native_skylakex blas_kernel))"
  # The test has teeth only if the kernels change the numbers.
  ! same_scores native_skylakex pinned_as_haswell ||
    fail "SkylakeX and Haswell kernels gave identical scores: this test cannot tell pinned from native"
  same_scores pinned_as_skylakex pinned_as_haswell ||
    fail "pinned mode gave other scores on a processor that picks SkylakeX than on one that picks Haswell"
  for run in pinned_as_skylakex pinned_as_haswell; do
    [ "$(manifest_field $run blas_kernel)" = Haswell ] && [ "$(manifest_field $run aten_capability)" = avx2 ] &&
      [ "$(manifest_field $run pinned)" = True ] || fail "manifest of $run does not record pinned kernels"
  done
  manifest_field pinned_as_skylakex note | grep -q "OPENBLAS_CORETYPE=SkylakeX" ||
    fail "the override of OPENBLAS_CORETYPE=SkylakeX is not noted in the manifest"
  echo "ok: pinned scores identical under SkylakeX and Haswell core types; native SkylakeX differs"

  # A finished run of other kernels is neither reused nor replaced.
  if "$inflab" --quiet run "$src/experiments/quickstart.toml" --out "$work/native_skylakex" \
    --cache "$work/cache-native_skylakex" "${small[@]}" >"$work/rerun.txt" 2>&1; then
    fail "a finished native run was reused (or replaced) by a pinned rerun"
  fi
  grep -q "computed on other kernels" "$work/rerun.txt" || { cat "$work/rerun.txt"; fail "unclear refusal"; }
  echo "ok: a finished run of other kernels is refused, with how to proceed"
else
  echo "skipped: this processor cannot run AVX-512 kernels, so the SkylakeX core type cannot be forced"
  quickstart pinned_as_haswell env OPENBLAS_CORETYPE=Haswell
fi

# gradients NAME FILE [env VAR=VALUE ...] -- SIZES...: per-example gradients of a paper study at
# tiny sizes, pinned, 2 threads, on its own cache.
gradients() {
  local name="$1" file="$2" environment=()
  shift 2
  while [ "$1" != -- ]; do environment+=("$1"); shift; done
  shift
  env "${environment[@]}" "$inflab" --quiet --threads 2 gradients "$src/experiments/paper/$file" \
    --out "$work/$name" --cache "$work/cache-$name" --set 'sweep={}' --set training.epochs=1 "$@" \
    >"$work/$name.txt" 2>&1 || { cat "$work/$name.txt"; fail "gradients $name failed"; }
}
llm=(--set dataset.train_per_class=2 --set dataset.test_per_class=1 --set checkpoints.count=1
  --set 'model.lora.targets=["blk.0.attn_q", "blk.29.attn_v"]')
diffusion=(--set dataset.train_per_class=3 --set dataset.test_per_class=1 --set dataset.n_pretrain=40
  --set training.pretrain_epochs=1 --set queries.generated_per_class=2 --set queries.sampling_steps=3)
if grep -qw avx512f /proc/cpuinfo; then
  gradients llm_skylakex class_detection_llm_math.toml env OPENBLAS_CORETYPE=SkylakeX -- "${llm[@]}"
  gradients llm_haswell class_detection_llm_math.toml env OPENBLAS_CORETYPE=Haswell -- "${llm[@]}"
  same_scores llm_skylakex llm_haswell || fail "SmolLM2's pinned LoRA gradients depend on the core type"
  echo "ok: SmolLM2 gradients identical under SkylakeX and Haswell core types"
  gradients ddpm_skylakex class_detection_diffusion_style.toml env OPENBLAS_CORETYPE=SkylakeX -- "${diffusion[@]}"
  gradients ddpm_haswell class_detection_diffusion_style.toml env OPENBLAS_CORETYPE=Haswell -- "${diffusion[@]}"
  same_scores ddpm_skylakex ddpm_haswell || fail "the denoiser's pinned LoRA gradients depend on the core type"
  echo "ok: denoiser gradients identical under SkylakeX and Haswell core types"
fi

# Threads: OpenBLAS's threaded GEMMs round differently from one thread, so a result holds for its
# thread count, which is part of the stage keys. A one-thread run on the two-thread run's cache
# recomputes every stage; a second two-thread run reuses them all and gives the same scores.
stages_cached() {  # stages_cached RUN: whether each stage it visited came from the cache (fits aside)
  /usr/bin/python3 -c 'import json, sys; cached = json.load(open(sys.argv[1]))["stage_cached"]
print(" ".join(f"{s}={c}" for s, c in cached.items() if not s.startswith("fit:")))' \
    "$(find "$work/$1" -name manifest.json | head -1)"
}
"$inflab" --quiet --threads 1 run "$src/experiments/quickstart.toml" --out "$work/one_thread" \
  --cache "$work/cache-pinned_as_haswell" "${small[@]}" >"$work/one_thread.txt" 2>&1 ||
  { cat "$work/one_thread.txt"; fail "one-thread run failed"; }
[[ "$(stages_cached one_thread)" != *True* ]] ||
  fail "a one-thread run reused stages computed on two threads ($(stages_cached one_thread))"
"$inflab" --quiet --threads 2 run "$src/experiments/quickstart.toml" --out "$work/two_threads" \
  --cache "$work/cache-pinned_as_haswell" "${small[@]}" >"$work/two_threads.txt" 2>&1 ||
  { cat "$work/two_threads.txt"; fail "two-thread rerun failed"; }
[[ "$(stages_cached two_threads)" == gradients=True ]] ||
  fail "a two-thread rerun recomputed stages of the same numerics ($(stages_cached two_threads))"
same_scores two_threads pinned_as_haswell || fail "a rerun from the cache gave other scores"
echo "ok: thread count is part of the stage keys; a rerun on the same numerics reuses every stage"
