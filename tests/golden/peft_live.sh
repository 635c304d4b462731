#!/usr/bin/env bash
# The committed PEFT adapters loaded by the real transformers + peft, now, compared with what was
# recorded (both golden scripts with --check). Needs the reference venvs their headers describe
# ($INFLAB_PEFT_PYTHON, default /tmp/refenv/bin/python; $INFLAB_PEFT_LLM_PYTHON, default
# /tmp/refenv2/bin/python); where they are absent the test is skipped (exit 77) with a message.
set -euo pipefail
src="${1:?usage: peft_live.sh SOURCE_DIR}"
data="${INFLAB_DATA:-$HOME/.cache/inflab/data}"
minilm_python="${INFLAB_PEFT_PYTHON:-/tmp/refenv/bin/python}"
llm_python="${INFLAB_PEFT_LLM_PYTHON:-/tmp/refenv2/bin/python}"
ran=0
if [ -x "$minilm_python" ] && "$minilm_python" -c "import peft, transformers" 2>/dev/null; then
  "$minilm_python" "$src/tests/golden/make_peft_golden.py" "$data/minilm" --check
  ran=1
else
  echo "peft_live: skipped MiniLM: no Python with peft and transformers at $minilm_python (see make_peft_golden.py)"
fi
if [ -x "$llm_python" ] && "$llm_python" -c "import peft, transformers, gguf" 2>/dev/null; then
  "$llm_python" "$src/tests/golden/make_peft_smollm2_golden.py" "$data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --check
  ran=1
else
  echo "peft_live: skipped SmolLM2: no Python with peft, transformers and gguf at $llm_python (see make_peft_smollm2_golden.py)"
fi
[ "$ran" = 1 ] || exit 77
