#!/usr/bin/env python3
"""Numbers quoted in the docs' prose, tied to the committed result they quote, so that a sentence
cannot drift from its table.

A quoted number is written between two HTML comments (invisible when the Markdown is rendered):

    DataInf <!--q class_detection.csv experiment=...@scoredprompt estimator=datainf : auc-->1.000<!--/q-->
    fine-tuning <!--q class_detection_llm_paper_protocol_math/fine_tuning_manifest.json : stage_seconds.finetune-->583<!--/q--> s

The source is a file under the results root: a CSV, whose row is chosen by `column=value` filters
(exactly one row must match; a value may hold a colon, `estimator=stage:finetune`) and whose column
(or columns, in order: `: mean_difference ci_low ci_high`) follows the colon set off by spaces; or
a JSON file and a dotted path.
The quoted text keeps its own format: each number in it must equal the source's corresponding
number rounded to as many decimals as the text shows (a cell such as "+0.33 [+0.27, +0.38]"
quotes all three). A lookup that finds nothing, or several rows, is an error.

    /usr/bin/python3 framework/report/quoted_numbers.py results/paper docs/results.md           --check
    /usr/bin/python3 framework/report/quoted_numbers.py results/paper docs/results.md --write    rewrite the
                                                      quoted numbers from the sources (same decimals)
"""
import csv
import json
import os
import re
import sys

# The quoted text holds no markup (a backtick or "<" means the pattern is being shown, not used).
QUOTE = re.compile(r"<!--q (?P<source>[^>]*?)\s+:\s+(?P<field>[^>]*?)-->(?P<text>[^<`]*?)<!--/q-->", re.S)
NUMBER = re.compile(r"[+-]?\d+(?:\.(\d+))?")
SOURCE_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")  # CSV cells may be 1e-05


class SourceError(Exception):
    pass


def lookup(root, source, field, cache):
    parts = source.split()
    if not parts:
        raise SourceError("no source file named")
    path = os.path.join(root, parts[0])
    if path not in cache:
        if not os.path.exists(path):
            raise SourceError(f"{path}: no such file")
        cache[path] = json.load(open(path)) if path.endswith(".json") else list(csv.DictReader(open(path)))
    data = cache[path]
    if path.endswith(".json"):
        for key in field.split("."):
            if not isinstance(data, dict) or key not in data:
                raise SourceError(f"{path}: no key '{field}' (missing '{key}')")
            data = data[key]
        return str(data)
    filters = dict(f.split("=", 1) for f in parts[1:])
    rows = [r for r in data if all(r.get(k) == v for k, v in filters.items())]
    if len(rows) != 1:
        raise SourceError(f"{path}: {len(rows)} rows match {filters} (expected exactly one)")
    for column in field.split():
        if column not in rows[0]:
            raise SourceError(f"{path}: no column '{column}' (columns: {', '.join(rows[0])})")
    return " ".join(rows[0][column] for column in field.split())


def requote(text, value):
    """`text` with each of its numbers replaced by the value's corresponding number, at the text's
    decimals (and with an explicit + where the text has one). None when the value has too few."""
    numbers = [float(m.group(0)) for m in SOURCE_NUMBER.finditer(value)]
    out, k = [], 0
    last = 0
    for m in NUMBER.finditer(text):
        if k >= len(numbers):
            return None
        decimals = len(m.group(1) or "")
        sign = "+" if m.group(0).startswith("+") else ""
        out += [text[last:m.start()], f"{numbers[k]:{sign}.{decimals}f}"]
        last, k = m.end(), k + 1
    return "".join(out) + text[last:]


def process(root, doc_path, write):
    doc = open(doc_path).read()
    problems, cache, count = [], {}, 0

    def replace(match):
        nonlocal count
        count += 1
        line = doc.count("\n", 0, match.start()) + 1
        try:
            value = lookup(root, match.group("source"), match.group("field"), cache)
        except SourceError as e:
            problems.append(f"{doc_path}:{line}: {e}")
            return match.group(0)
        text = match.group("text")
        expected = requote(text, value)
        if expected is None or not NUMBER.search(text):
            problems.append(f"{doc_path}:{line}: quotes \"{text}\" but the source holds \"{value}\"")
            return match.group(0)
        if expected != text and not write:
            problems.append(f"{doc_path}:{line}: says \"{text}\", the source ({match.group('source')} : "
                            f"{match.group('field')}) says \"{value}\", i.e. \"{expected}\"")
        return match.group(0).replace(f"-->{text}<!--/q-->", f"-->{expected}<!--/q-->")

    updated = QUOTE.sub(replace, doc)
    if write and updated != doc and not problems:
        with open(doc_path + ".tmp", "w") as f:
            f.write(updated)
        os.replace(doc_path + ".tmp", doc_path)
    return count, problems


def main(argv):
    if len(argv) != 4 or argv[3] not in ("--check", "--write"):
        sys.exit(__doc__)
    count, problems = process(argv[1], argv[2], argv[3] == "--write")
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{argv[2]}: {count} quoted numbers, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
