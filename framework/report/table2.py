#!/usr/bin/env python3
"""docs/results.md's "Table 2 under the paper's protocol" section, generated from the committed
results so that its numbers cannot drift from them.

    /usr/bin/python3 framework/report/table2.py results/paper            print the section
    /usr/bin/python3 framework/report/table2.py results/paper --write    replace it in docs/results.md
    /usr/bin/python3 framework/report/table2.py results/paper --check    exit 1 when docs/results.md differs

Reads <root>/class_detection.csv (written by class_detection.py, `inflab report`) and the runs'
manifest.json (costs). The section sits between the markers below in docs/results.md.
"""
import csv
import json
import os
import sys

BEGIN, END = "<!-- table2:begin (framework/report/table2.py) -->", "<!-- table2:end -->"
DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "results.md")

# (class_detection.csv group, task, what the protocol is)
LLM = "class_detection_llm_paper_protocol_math"
DIFFUSION = "class_detection_diffusion_style_notebook_protocol"
ABLATION = "class_detection_diffusion_style_notebook_ablation"
ROWS = [
    (LLM + "@scoredprompt_paddinglongest", "math (no reasoning)",
     "paper's code: prompt loss, mean, padding scored"),
    (LLM + "@scoredprompt_paddingnone", "math (no reasoning)", "prompt loss, mean, no padding"),
    (LLM + "@scoredresponse_paddingnone", "math (no reasoning)", "answer loss, mean, no padding"),
    (DIFFUSION, "diffusion style", "notebook: timesteps concatenated, shared noise, rank 2"),
] + [(f"{ABLATION}@shared_noise{shared}_timestep_gradients{parts}", "diffusion style",
      f"ablation: {'shared' if shared == 'true' else 'per-image'} noise, timesteps "
      f"{'concatenated' if parts == 'concatenate' else 'summed'}")
     for shared in ("true", "false") for parts in ("concatenate", "sum")]
# The paper's Table 2 (Hessian-free, DataInf) and, for the style notebook, its own recorded output.
PAPER = {
    "math (no reasoning)": "Table 2 (Llama-2-13B-chat): Hessian-free 0.770 / 0.258, DataInf 1.000 / 0.999",
    "diffusion style": "Table 2 (Stable Diffusion): Hessian-free 0.692 / 0.533, DataInf 0.820 / 0.687; "
                       "the notebook's own output: AUC 0.612 (Hessian-free) / 0.599 (DataInf)",
}


def cell(row):
    return f"{float(row['auc']):.3f} / {float(row['recall']):.3f}" if row else "-"


def costs(root, experiment):
    """Per run: (run, finetune s or 'cached', gradients s or 'cached', estimator seconds)."""
    out = []
    base = os.path.join(root, experiment)
    for run in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, run, "manifest.json")
        if not os.path.exists(path):
            continue
        m = json.load(open(path))
        stage = lambda name: ("cached" if m["stage_cached"].get(name) else
                              f"{m['stage_seconds'].get(name, 0):.0f} s")
        estimators = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(m.get("estimator_seconds", {}).items()))
        finetune = stage("finetune") + (f" (base pretraining {stage('pretrain')})" if "pretrain" in m["stage_seconds"] else "")
        out.append((run, finetune, stage("gradients"), estimators, m.get("git_commit", "?")))
    return out


def section(root):
    table = {}
    for row in csv.DictReader(open(os.path.join(root, "class_detection.csv"))):
        table[(row["experiment"], row["estimator"])] = row
    lines = [BEGIN, "",
             "| task | protocol | Hessian-free AUC / recall | DataInf AUC / recall | DataInf - Hessian-free AUC "
             "[95%] | Exact AUC / recall | test accuracy | runs x queries |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    missing = []
    for group, task, protocol in ROWS:
        hf, di, ex = (table.get((group, e)) for e in ("hessian_free", "datainf", "exact"))
        if not (hf and di):
            missing.append(group)
            continue
        accuracy = f"{float(di['test_accuracy']):.2f}" if di["test_accuracy"] else "-"
        lines.append(f"| {task} | {protocol} | {cell(hf)} | {cell(di)} | {di['auc_minus_hessian_free'] or '-'} | "
                     f"{cell(ex)} | {accuracy} | {di['runs']} x {int(di['units']) // int(di['runs'])} |")
    lines += ["", "The paper, for comparison:"]
    lines += [f"- {task}: {text}." for task, text in PAPER.items()]
    if missing:
        lines += ["", "Not yet run (no rows in class_detection.csv): " + ", ".join(f"`{m}`" for m in missing) + "."]
    lines += ["", "Costs (from each run's manifest.json; 2 threads, other jobs beside some of them):", ""]
    first = os.path.join(root, LLM, "fine_tuning_manifest.json")
    if os.path.exists(first):  # the LLM runs reuse the adapter of a first run, whose manifest this is
        m = json.load(open(first))
        lines.append(f"- `{LLM}/fine_tuning_manifest.json` (the first run, which fine-tuned the adapter the three "
                     f"runs share; commit {m.get('git_commit', '?')}): fine-tuning {m['stage_seconds']['finetune']:.0f} s.")
    for experiment in (LLM, DIFFUSION):  # the ablation reuses the notebook runs' fine-tunings
        for run, finetune, gradients, estimators, commit in costs(root, experiment):
            lines.append(f"- `{experiment}/{run}` (commit {commit}): fine-tuning {finetune}, gradients and "
                         f"test answers {gradients}; {estimators}.")
    lines += ["", END]
    return "\n".join(lines)


def main(argv):
    if len(argv) < 2 or argv[2:] not in ([], ["--write"], ["--check"]):
        sys.exit(__doc__)
    text = section(argv[1])
    if len(argv) == 2:
        print(text)
        return 0
    docs = open(DOCS).read()
    if BEGIN not in docs or END not in docs:
        sys.exit(f"{DOCS}: no {BEGIN} ... {END} markers")
    current = docs[docs.index(BEGIN):docs.index(END) + len(END)]
    if argv[2] == "--check":
        if current != text:
            print(f"{DOCS}: the Table 2 section differs from what framework/report/table2.py writes from "
                  f"{argv[1]}; run it with --write", file=sys.stderr)
            return 1
        return 0
    with open(DOCS + ".tmp", "w") as f:
        f.write(docs.replace(current, text))
    os.replace(DOCS + ".tmp", DOCS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
