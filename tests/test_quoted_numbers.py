#!/usr/bin/env python3
"""framework/report/quoted_numbers.py on a hand-made results folder: true quotes pass, a drifted
one fails naming the line and the source's value, --write repairs it at the text's decimals, and
lookups that match no row, several rows or no column are errors."""
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "framework", "report", "quoted_numbers.py")


def run(root, doc, mode):
    done = subprocess.run([sys.executable, SCRIPT, root, doc, mode], capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def main():
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "summary.csv"), "w") as f:
            f.write("experiment,estimator,auc,diff\nmlp,datainf,0.81649,\"+0.0312 [+0.0101, +0.0520]\"\n"
                    "mlp,exact,0.79,\ncnn,datainf,0.5,\ncnn,datainf,0.6,\ntiny,datainf,-8.085e-06,\n"
                    "mlp,stage:finetune,42.25,\n")
        os.makedirs(os.path.join(root, "run"))
        with open(os.path.join(root, "run", "manifest.json"), "w") as f:
            f.write('{"stage_seconds": {"finetune": 583.4}}')
        doc = os.path.join(root, "doc.md")
        good = ("DataInf <!--q summary.csv experiment=mlp estimator=datainf : auc-->0.816<!--/q--> "
                "tiny <!--q summary.csv experiment=tiny estimator=datainf : auc-->-0.0000<!--/q--> "
                "(<!--q summary.csv experiment=mlp estimator=datainf : diff-->+0.03 [+0.01, +0.05]<!--/q-->), "
                "exact <!--q summary.csv experiment=mlp estimator=exact : auc auc-->0.8 (0.79)<!--/q--> "
                "fine-tuning <!--q run/manifest.json : stage_seconds.finetune-->583<!--/q--> s, "
                "a value with a colon <!--q summary.csv experiment=mlp estimator=stage:finetune : auc-->42.2<!--/q--> s.\n")
        open(doc, "w").write(good)
        code, out = run(root, doc, "--check")
        assert code == 0 and "6 quoted numbers, 0 problem(s)" in out, out

        drifted = good.replace("-->0.816<", "-->0.823<").replace("-->583<", "-->570<")
        open(doc, "w").write("line one\n" + drifted)
        code, out = run(root, doc, "--check")
        assert code == 1 and "doc.md:2: says \"0.823\"" in out and "\"0.816\"" in out and "\"583\"" in out, out
        code, out = run(root, doc, "--write")
        assert code == 0 and open(doc).read() == "line one\n" + good, open(doc).read()

        for bad, message in (("experiment=gnn estimator=datainf : auc", "0 rows match"),
                             ("experiment=cnn estimator=datainf : auc", "2 rows match"),
                             ("experiment=mlp estimator=exact : recall", "no column 'recall'"),
                             ("experiment=mlp estimator=exact : diff", "quotes \"0.79\" but the source holds \"\""),
                             ("missing.csv experiment=mlp : auc", "no such file")):
            source = bad if bad.startswith("missing") else "summary.csv " + bad
            open(doc, "w").write(f"x <!--q {source}-->0.79<!--/q-->\n")
            code, out = run(root, doc, "--check")
            assert code == 1 and message in out, (bad, out)
            code, out = run(root, doc, "--write")  # never writes over a document it cannot check
            assert code == 1 and open(doc).read() == f"x <!--q {source}-->0.79<!--/q-->\n", (bad, out)
    print("quoted_numbers: ok")


if __name__ == "__main__":
    main()
