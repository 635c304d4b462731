#!/usr/bin/env python3
"""docs/results.md's "Table 2 under the paper's protocol" section, generated from the committed
results so that its numbers cannot drift from them.

    /usr/bin/python3 framework/report/table2.py results/paper            print the section
    /usr/bin/python3 framework/report/table2.py results/paper --write    replace it in docs/results.md,
                                                                         draw figures/fig9_table2_protocols
    /usr/bin/python3 framework/report/table2.py results/paper --check    exit 1 when docs/results.md differs

Reads <root>/class_detection.csv (written by class_detection.py, `inflab report`) and the runs'
manifest.json (costs). The section sits between the markers below in docs/results.md.
"""
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from doc_blocks import sync  # noqa: E402
from paper_numbers import BY_TITLE  # noqa: E402
from style import COLOURS, LABELS, save  # noqa: E402

BEGIN, END = "<!-- table2:begin (framework/report/table2.py) -->", "<!-- table2:end -->"
DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "results.md")

# (class_detection.csv group, task, what the protocol is). The paper's configuration: every task
# scored with the adapter fine-tuned on math with reasoning (model.adapter_from), two protocols;
# then math scored with an adapter fine-tuned on its own data, with the padding ablation.
SOURCE = "class_detection_llm_paper_protocol_math_reasoning"
SHARED = {"sentence transformations": "class_detection_llm_paper_protocol_grammars",
          "math (no reasoning)": "class_detection_llm_paper_protocol_math_shared_adapter",
          "math (reasoning)": SOURCE}
LLM = "class_detection_llm_paper_protocol_math"
DIFFUSION = "class_detection_diffusion_style_notebook_protocol"
ABLATION = "class_detection_diffusion_style_notebook_ablation"
ROWS = [
    (f"{experiment}@{run}", task, f"{protocol}; the math-with-reasoning adapter")
    for task, experiment in SHARED.items()
    for run, protocol in (("scoredprompt", "paper's code: prompt loss, mean, padding scored"),
                          ("scoredresponse", "answer loss, mean, no padding"))
] + [
    (LLM + "@scoredprompt_paddinglongest", "math (no reasoning)",
     "paper's code: prompt loss, mean, padding scored; an adapter fine-tuned on this task"),
    (LLM + "@scoredprompt_paddingnone", "math (no reasoning)",
     "prompt loss, mean, no padding; an adapter fine-tuned on this task"),
    (LLM + "@scoredresponse_paddingnone", "math (no reasoning)",
     "answer loss, mean, no padding; an adapter fine-tuned on this task"),
    (DIFFUSION, "diffusion style", "notebook: timesteps concatenated, shared noise, rank 2"),
] + [(f"{ABLATION}@shared_noise{shared}_timestep_gradients{parts}", "diffusion style",
      f"ablation: {'shared' if shared == 'true' else 'per-image'} noise, timesteps "
      f"{'concatenated' if parts == 'concatenate' else 'summed'}")
     for shared in ("true", "false") for parts in ("concatenate", "sum")]
# The paper's Table 2, as one line per task, and the AUCs for the figure: (Hessian-free, DataInf).
PAPER = {title: f"Table 2 ({e['model']}): Hessian-free {e['hessian_free'][0]:.3f} / {e['hessian_free'][1]:.3f}, "
                f"DataInf {e['datainf'][0]:.3f} / {e['datainf'][1]:.3f}" + (f"; {e['notebook']}" if "notebook" in e else "")
         for title, e in BY_TITLE.items() if title != "diffusion subject"}
PAPER_AUC = {title: (e["hessian_free"][0], e["datainf"][0]) for title, e in BY_TITLE.items()}


def read_table(root):
    return {(row["experiment"], row["estimator"]): row
            for row in csv.DictReader(open(os.path.join(root, "class_detection.csv")))}


def figure(root):
    """<root>/figures/fig9_table2_protocols.{png,pdf}: each row's AUC (Hessian-free, DataInf, Exact)
    with its 95% interval, and the paper's Table 2 values as orange ticks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = read_table(root)
    rows = [(group, task, protocol) for group, task, protocol in ROWS if (group, "datainf") in table]
    estimators = ("hessian_free", "datainf", "exact")
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.2))
    for i, (group, task, protocol) in enumerate(rows):
        for j, estimator in enumerate(estimators):
            row = table.get((group, estimator))
            if row:
                mean = float(row["auc"])
                ax.barh(i + (j - 1) * 0.26, mean, 0.26, color=COLOURS[estimator],
                        xerr=[[mean - float(row["auc_low"])], [float(row["auc_high"]) - mean]], capsize=2,
                        label=LABELS[estimator] if i == 0 else None)
        for j, value in enumerate(PAPER_AUC.get(task, ())):  # the paper's Hessian-free, DataInf
            ax.plot([value, value], [i + (j - 1) * 0.26 - 0.13, i + (j - 1) * 0.26 + 0.13], color="#ff7f0e",
                    linewidth=2.5, label="paper, Table 2 (Hessian-free, DataInf)" if i == 0 and j == 0 else None)
    ax.set_yticks(range(len(rows)), [f"{task}\n{protocol}" for _, task, protocol in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0.4, 1.02)
    ax.axvline(0.5, color="#aaaaaa", linestyle=":", linewidth=1)
    ax.grid(alpha=0.3, axis="x")
    ax.set_xlabel("class-detection AUC: mean over test examples and seeds, 95% interval", fontsize=8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08 - 0.6 / len(rows)), ncol=2, fontsize=7)
    ax.set_title("Table 2 under the paper's protocol and beside it (docs/results.md)", fontsize=9)
    fig.tight_layout()
    save(fig, os.path.join(root, "figures"), "fig9_table2_protocols")


def cell(row):
    return f"{float(row['auc']):.3f} / {float(row['recall']):.3f}" if row else "-"


def costs(root, experiment):
    """Per run: (run, finetune s or 'cached', gradients s or 'cached', estimator seconds, commit). The runs
    are the experiment's run folders and its first_run_*.json: manifests of earlier runs whose
    fine-tunings and gradients the committed runs found in the cache (so their cost is recorded)."""
    out = []
    base = os.path.join(root, experiment)
    entries = sorted(os.listdir(base)) if os.path.isdir(base) else []
    manifests = [(name, os.path.join(base, name)) for name in entries
                 if name.startswith("first_run_") and name.endswith(".json")]
    manifests += [(run, os.path.join(base, run, "manifest.json")) for run in entries
                  if os.path.exists(os.path.join(base, run, "manifest.json"))]
    for run, path in manifests:
        m = json.load(open(path))
        # A stage is "cached" when the cache had it, or when it did not run at all because a later
        # stage's output was cached (fine-tuning when the gradients were).
        stage = lambda name: ("cached" if m["stage_cached"].get(name) or name not in m["stage_seconds"] else
                              f"{m['stage_seconds'][name]:.0f} s")
        estimators = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(m.get("estimator_seconds", {}).items()))
        finetune = stage("finetune") + (f" (base pretraining {stage('pretrain')})" if "pretrain" in m["stage_seconds"] else "")
        if "finetune (adapter_from)" in m["stage_seconds"]:  # the source experiment's, run first
            finetune = f"{m['stage_seconds']['finetune (adapter_from)']:.0f} s (the adapter_from source's)"
        out.append((run, finetune, stage("gradients"), estimators, m.get("git_commit", "?")))
    return out


def section(root):
    table = read_table(root)
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
    for experiment in (*SHARED.values(), LLM, DIFFUSION):  # the ablation reuses the notebook's fine-tunings
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
    differ = sync(DOCS, {"table2": (BEGIN, END, text)}, write=argv[2] == "--write")
    if argv[2] == "--check":
        if differ:
            print(f"{DOCS}: the Table 2 section differs from what framework/report/table2.py writes from "
                  f"{argv[1]}; run it with --write", file=sys.stderr)
            return 1
        return 0
    figure(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
