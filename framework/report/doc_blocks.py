"""Generated blocks of a Markdown file: the text between a begin and an end marker is what a report
script writes, so that a table in docs/ cannot drift from the results it is made from."""
import os
import sys


def sync(path, blocks, write):
    """blocks: {name: (begin marker, end marker, text including both markers)}. Compares each block
    of `path` with its text and, with `write`, replaces the differing ones (atomically). Returns the
    names of the blocks that differ; exits with a message naming the file when a marker is missing."""
    docs = original = open(path).read()
    differ = []
    for name, (begin, end, text) in blocks.items():
        if begin not in docs or end not in docs:
            sys.exit(f"{path}: no {begin} ... {end} markers (block {name})")
        current = docs[docs.index(begin):docs.index(end) + len(end)]
        if current != text:
            differ.append(name)
            docs = docs.replace(current, text)
    if write and docs != original:
        with open(path + ".tmp", "w") as f:
            f.write(docs)
        os.replace(path + ".tmp", path)
    return differ
