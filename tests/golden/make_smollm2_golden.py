#!/usr/bin/env python3
"""Golden data for smollm2_lora, produced once (not at run time, not in CI) from references
independent of inflab:

- token ids of 36 texts from llama.cpp's tokenizer (PyPI llama-cpp-python, compiled from
  source, vocab_only), with and without control-token parsing;
- last-position logits of 3 prompts and their 12-token greedy continuations from a float32
  forward written here in NumPy on weights dequantized by PyPI gguf's own dequantizers.

Usage (in a throwaway venv: pip install gguf numpy llama-cpp-python):
    python tests/golden/make_smollm2_golden.py GGUF_FILE > tests/golden/smollm2.json
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

TEXTS = [
    "Hello world",
    "Hello  world   with   spaces",
    " leading space",
    "trailing space ",
    "tabs\tand\nnewlines\n\n",
    "Numbers: 12345 and 3.14159 and 1,000,000",
    "Year 2024, 42nd floor, 7th",
    "Café au lait, s'il vous plaît!",
    "naïve façade résumé coöperate",
    "Straße, Øresund, Łódź, İstanbul",
    "日本語のテキスト",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "Emoji: 😀🎉👍🏽 and ❤️",
    "def f(x):\n    return x ** 2  # square",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<html><body class=\"main\">Hi</body></html>",
    "It's, they're, we've, I'm, you'll, he'd",
    "IT'S LOUD, DON'T",
    "e-mail: someone@example.com, https://example.org/path?q=1",
    "Math: x^2 + y^2 = z^2, α + β = γ, ∑ ∫ √",
    "   ",
    "\n",
    "a",
    "superlongwordthatprobablysplitsintomanypieces",
    "ALL CAPS SENTENCE WITH NUMBERS 99",
    "Mixed123Digits456Inside",
    "½ ² ³ ⅓ numbers of other kinds",
    "Reverse the word order: the quick brown fox",
    "What is 17 + 25? Answer: 42",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "text <|endoftext|> more",
    "a<|im_end|>b",
    "<not_a_token> <|im_start",
    "Ünïcödé   mixed\t\twhitespace \r\n end",
    "\u200bzero\u200bwidth",
]
SPECIAL_TEXTS = [TEXTS[30], TEXTS[31], TEXTS[32], TEXTS[33]]
PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):",
]


def load(path):
    reader = GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml")}
    weights = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        weights[t.name] = w.reshape([int(x) for x in reversed(t.shape)])
    return fields, weights


def forward(ids, fields, w):
    """Last hidden states of a llama forward pass, float32, written from the architecture."""
    heads = fields["llama.attention.head_count"]
    kv_heads = fields["llama.attention.head_count_kv"]
    width = fields["llama.embedding_length"]
    eps = fields["llama.attention.layer_norm_rms_epsilon"]
    base = fields["llama.rope.freq_base"]
    d = width // heads
    t = len(ids)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    angles = np.arange(t)[:, None] * base ** (-2.0 * np.arange(d // 2) / d)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    def rope(x):  # t x h x d, pairs (2i, 2i+1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
        out[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
        return out

    x = w["token_embd.weight"][ids]
    mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
    for layer in range(fields["llama.block_count"]):
        p = f"blk.{layer}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(t, heads, d))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(t, kv_heads, d))
        v = (h @ w[p + "attn_v.weight"].T).reshape(t, kv_heads, d)
        out = np.empty((t, heads, d), dtype=np.float32)
        for j in range(heads):
            kv = j // (heads // kv_heads)
            s = q[:, j, :] @ k[:, kv, :].T / np.sqrt(d) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, j, :] = (s / s.sum(-1, keepdims=True)) @ v[:, kv, :]
        x = x + out.reshape(t, width) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    return rms(x, w["output_norm.weight"])


def main():
    from llama_cpp import Llama

    path = sys.argv[1]
    llm = Llama(model_path=path, vocab_only=True, verbose=False)

    def tok(text, special):
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    fields, w = load(path)
    output = w.get("output.weight", w["token_embd.weight"])
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(output.shape[0], 256, replace=False).tolist())
    prompts = []
    for text in PROMPTS:
        ids = tok(text, True)
        logits = forward(ids, fields, w)[-1] @ output.T
        top = np.argsort(-logits)[:32].tolist()
        indices = sorted(set(sample) | set(top))
        sequence = list(ids)
        for _ in range(12):  # greedy, recomputing the whole sequence each step
            nxt = int(np.argmax(forward(sequence, fields, w)[-1] @ output.T))
            if nxt in (0, 2):
                break
            sequence.append(nxt)
        prompts.append({"text": text, "ids": ids, "logit_indices": indices,
                        "logits": [round(float(logits[i]), 6) for i in indices],
                        "greedy": sequence[len(ids):]})
    golden = {
        "source": "token ids: llama-cpp-python (llama.cpp) vocab_only, add_bos=False; logits and greedy "
                  "continuations: NumPy float32 forward on weights dequantized by PyPI gguf",
        "tokens": [{"text": t, "special": False, "ids": tok(t, False)} for t in TEXTS] +
                  [{"text": t, "special": True, "ids": tok(t, True)} for t in SPECIAL_TEXTS],
        "prompts": prompts,
    }
    json.dump(golden, sys.stdout, ensure_ascii=False, indent=0)
    print()


if __name__ == "__main__":
    main()
