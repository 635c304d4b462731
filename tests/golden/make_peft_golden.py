#!/usr/bin/env python3
"""Records what the real Hugging Face PEFT does with an adapter exported by `inflab export --peft`:
tests/golden/peft_minilm/ (committed) is loaded onto all-MiniLM-L6-v2 by transformers + peft, every
tensor is checked to have been taken (PEFT loads with strict=False and would skip a misnamed one),
and the mean-pooled, L2-normalised sentence embeddings with and without the adapter are written
to tests/golden/peft_minilm.json, which test_text "[peft]" compares with inflab's.

Reference stack (only for producing the file, never needed at run time):
  apt-get install python3-torch python3-venv                  # Debian's PyTorch 1.13 (CPU)
  /usr/bin/python3 -m venv --system-site-packages /tmp/refenv
  /tmp/refenv/bin/pip install --no-deps transformers==4.30.2 tokenizers==0.13.3 huggingface-hub==0.16.4 \
      safetensors==0.3.3 peft==0.4.0 accelerate==0.21.0 regex tqdm pyyaml filelock requests packaging psutil fsspec
The adapter: `inflab run` of the tiny_minilm configuration in tests/test_minilm.cpp, then
  inflab export RUN_DIR --peft tests/golden/peft_minilm
Then:
  /tmp/refenv/bin/python tests/golden/make_peft_golden.py ~/.cache/inflab/data/minilm [--check]
--check compares with the recorded file instead of writing it (ctest peft_live).
"""
import hashlib
import json
import os
import sys

import numpy as np
import peft
import torch
import transformers
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

model_dir = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
adapter_dir = os.path.join(here, "peft_minilm")
SENTENCES = [
    "This coffee is the best I have ever had.",
    "Stale chips, would not buy again.",
    "The dog loves these treats!",
    "Arrived broken and tasted like cardboard.",
    "Good value for the price, fast shipping.",
]

tokenizer = AutoTokenizer.from_pretrained(model_dir)
base = AutoModel.from_pretrained(model_dir).eval()
model = PeftModel.from_pretrained(base, adapter_dir).eval()

# Every tensor in the file must have reached a module: compare the model's adapter state with it.
in_file = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
in_model = get_peft_model_state_dict(model)
assert set(in_file) == set(in_model), (sorted(set(in_file) ^ set(in_model)))[:5]
for key, value in in_file.items():
    assert torch.equal(in_model[key].float(), value.float()), key
config = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
scale = {m.scaling["default"] for m in model.modules() if hasattr(m, "scaling") and "default" in m.scaling}
assert scale == {config["lora_alpha"] / config["r"]}, scale


def embed(m):
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        hidden = m(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1)


with_adapter = embed(model)
with model.disable_adapter():
    without = embed(model)
difference = (with_adapter - without).abs().max().item()
assert difference > 1e-3, f"the adapter changes the embeddings by only {difference}"
digest = hashlib.sha256(open(os.path.join(adapter_dir, "adapter_model.safetensors"), "rb").read()).hexdigest()
out = {
    "peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
    "adapter_sha256": digest, "tensors_loaded": len(in_file), "scale": config["lora_alpha"] / config["r"],
    "max_length": 32, "sentences": SENTENCES,
    "embeddings": with_adapter.tolist(), "base_embeddings": without.tolist(),
}
if "--check" in sys.argv:  # the live test (ctest peft_live): PEFT today gives what was recorded
    recorded = json.load(open(os.path.join(here, "peft_minilm.json")))
    assert recorded["adapter_sha256"] == digest, "the committed adapter changed since it was recorded"
    worst = np.abs(np.array(recorded["embeddings"]) - with_adapter.numpy()).max()
    assert worst < 1e-5, f"PEFT's embeddings moved by {worst} from the recorded ones"
    print(f"peft_live: minilm adapter loaded by peft {peft.__version__}, embeddings as recorded ({worst:.1e})")
    sys.exit(0)
with open(os.path.join(here, "peft_minilm.json"), "w") as f:
    json.dump(out, f, indent=1)
print(f"peft {peft.__version__}: {len(in_file)} tensors loaded, adapter moves embeddings by up to {difference:.4f}")
