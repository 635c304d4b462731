#!/usr/bin/env python3
"""Records what the real Hugging Face PEFT does with a SmolLM2 adapter exported by `inflab export
--peft` (tests/golden/peft_smollm2/, committed): the GGUF weights are dequantized by PyPI gguf and
put into transformers' LlamaForCausalLM (query and key rows un-permuted from llama.cpp's layout),
whose logits are first checked against the NumPy reference of tests/golden/smollm2.json; then peft
loads the adapter (every tensor checked to have been taken: PEFT loads with strict=False), and the
last-position logits of the prompts with and without it go to tests/golden/peft_smollm2.json, which
test_llm "[peft]" compares with inflab's.

Reference stack (only for producing the file, never needed at run time):
  /usr/bin/python3 -m venv --system-site-packages /tmp/refenv2       # Debian's PyTorch 1.13 (CPU)
  /tmp/refenv2/bin/pip install --no-deps transformers==4.33.3 tokenizers==0.13.3 huggingface-hub==0.16.4 \
      safetensors==0.3.3 peft==0.4.0 accelerate==0.21.0 gguf regex tqdm pyyaml filelock requests packaging psutil fsspec
The adapter: `inflab run` of the tiny_llm configuration in tests/test_llm.cpp, then
  inflab export RUN_DIR --peft tests/golden/peft_smollm2
Then:
  /tmp/refenv2/bin/python tests/golden/make_peft_smollm2_golden.py ~/.cache/inflab/data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf [--check]
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
from transformers import LlamaConfig, LlamaForCausalLM

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
from make_smollm2_golden import load  # noqa: E402  (the same dequantization as smollm2.json)

fields, w = load(sys.argv[1])
heads, kv_heads = fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]
width, layers = fields["llama.embedding_length"], fields["llama.block_count"]
config = LlamaConfig(vocab_size=w["token_embd.weight"].shape[0], hidden_size=width,
                     intermediate_size=fields["llama.feed_forward_length"], num_hidden_layers=layers,
                     num_attention_heads=heads, num_key_value_heads=kv_heads,
                     rms_norm_eps=fields["llama.attention.layer_norm_rms_epsilon"],
                     rope_theta=fields["llama.rope.freq_base"], max_position_embeddings=2048,
                     tie_word_embeddings="output.weight" not in w, hidden_act="silu")


def unpermute(weight, n_head):  # llama.cpp's (head, d/2, 2) rows back to Hugging Face's (head, 2, d/2)
    out, inner = weight.shape
    return weight.reshape(n_head, out // n_head // 2, 2, inner).swapaxes(1, 2).reshape(out, inner)


state = {"model.embed_tokens.weight": w["token_embd.weight"], "model.norm.weight": w["output_norm.weight"]}
if "output.weight" in w:
    state["lm_head.weight"] = w["output.weight"]
names = {"attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
         "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
for i in range(layers):
    p, q = f"blk.{i}.", f"model.layers.{i}."
    state[q + "input_layernorm.weight"] = w[p + "attn_norm.weight"]
    state[q + "post_attention_layernorm.weight"] = w[p + "ffn_norm.weight"]
    state[q + "self_attn.q_proj.weight"] = unpermute(w[p + "attn_q.weight"], heads)
    state[q + "self_attn.k_proj.weight"] = unpermute(w[p + "attn_k.weight"], kv_heads)
    for g, h in names.items():
        state[q + h + ".weight"] = w[p + g + ".weight"]
model = LlamaForCausalLM(config).eval()
missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
                                            strict=False)
assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
model.tie_weights()

reference = json.load(open(os.path.join(here, "smollm2.json")))["prompts"]


def last_logits(m, ids):
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0, -1].double().numpy()


for p in reference:  # the conversion reproduces the NumPy reference forward
    got = last_logits(model, p["ids"])[p["logit_indices"]]
    assert np.abs(got - np.array(p["logits"])).max() < 2e-3, np.abs(got - np.array(p["logits"])).max()

adapter_dir = os.path.join(here, "peft_smollm2")
peft_model = PeftModel.from_pretrained(model, adapter_dir).eval()
in_file = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
in_model = get_peft_model_state_dict(peft_model)
assert set(in_file) == set(in_model), sorted(set(in_file) ^ set(in_model))[:5]
for key, value in in_file.items():
    assert torch.equal(in_model[key].float(), value.float()), key

rng = np.random.default_rng(0)
sample = sorted(rng.choice(config.vocab_size, 256, replace=False).tolist())
prompts = []
largest = 0.0
for p in reference:
    with_adapter = last_logits(peft_model, p["ids"])
    with peft_model.disable_adapter():
        without = last_logits(peft_model, p["ids"])
    indices = sorted(set(sample) | set(np.argsort(-with_adapter)[:32].tolist()))
    largest = max(largest, float(np.abs(with_adapter - without).max()))
    prompts.append({"ids": p["ids"], "logit_indices": indices,
                    "logits": [round(float(with_adapter[i]), 6) for i in indices],
                    "base_logits": [round(float(without[i]), 6) for i in indices]})
assert largest > 0.1, f"the adapter moves the logits by only {largest}"
digest = hashlib.sha256(open(os.path.join(adapter_dir, "adapter_model.safetensors"), "rb").read()).hexdigest()
if "--check" in sys.argv:  # the live test (ctest peft_live): PEFT today gives what was recorded
    recorded = json.load(open(os.path.join(here, "peft_smollm2.json")))
    assert recorded["adapter_sha256"] == digest, "the committed adapter changed since it was recorded"
    worst = max(np.abs(np.array(r["logits"]) - np.array(p["logits"])).max()
                for r, p in zip(recorded["prompts"], prompts))
    assert worst < 1e-4, f"PEFT's logits moved by {worst} from the recorded ones"
    print(f"peft_live: smollm2 adapter loaded by peft {peft.__version__}, logits as recorded ({worst:.1e})")
    sys.exit(0)
json.dump({"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
           "adapter_sha256": digest, "tensors_loaded": len(in_file), "prompts": prompts},
          open(os.path.join(here, "peft_smollm2.json"), "w"), indent=0)
print(f"peft {peft.__version__}: {len(in_file)} tensors loaded; conversion matches smollm2.json; "
      f"adapter moves logits by up to {largest:.3f}")
