#!/usr/bin/env python3
"""`inflab report DIR --html` in a real browser (headless Chromium through Selenium).

    test_html_report.py BUILD_DIR SOURCE_DIR [SCREENSHOT_DIR]

Makes three small real runs (Fashion-MNIST MLP with flipped labels, LDS and leave-one-out, aggregate;
the digits denoiser's style class detection with generated queries, pairwise; MiniLM on Fine Foods
reviews, pairwise), writes the report page and checks in Chromium, against the CSVs and score arrays
(not against the page's own output): the studies and summary tables have the right rows and values,
sorting a column sorts it, every estimator's helpful and harmful lists are the k most negative and
most positive scores of the array with the right example text, class and flip, the images load, the
Spearman agreement matrix equals scipy's, a run without score arrays says so, `./inflab explain
--html` shows the rows and scores explain printed, and the console has no errors. Saves screenshots. Exits 77 (skipped) only where Chromium or Selenium cannot be had.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import scipy.stats

SKIP = 77
TOP = 5
QUICKSTART_SETS = ["--set", "dataset.n_train=200", "--set", "dataset.n_validation=50", "--set",
                   "dataset.n_pretrain=1000", "--set", "training.epochs=2"]


def fail(message):
    print("test_html_report: FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        print("test_html_report: skipped: python3-selenium is not installed (./inflab test installs it)")
        sys.exit(SKIP)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not os.path.exists(driver_path):
        print("test_html_report: skipped: chromedriver is not installed (Debian chromium-driver)")
        sys.exit(SKIP)
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1600", "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def make_runs(build, source, results, cache):
    inflab = [os.path.join(build, "bin", "inflab"), "--quiet", "--threads", "1"]
    common = ["--out", results, "--cache", cache]
    runs = [
        [os.path.join(source, "experiments/quickstart.toml"), *QUICKSTART_SETS, "--set",
         'evaluation.metrics=["auc","pearson","lds","loo"]', "--set", "ground_truth.subsets=5", "--set",
         "ground_truth.fraction=0.5", "--set", "leave_one_out.examples=2", "--set", "leave_one_out.repeats=1"],
        [os.path.join(source, "experiments/paper/class_detection_diffusion_style.toml"), "--set", "sweep={}",
         "--set", "experiment.repeats=1", "--set", "training.epochs=1", "--set", "dataset.train_per_class=4", "--set",
         "dataset.test_per_class=1", "--set", "dataset.n_pretrain=40", "--set", "training.pretrain_epochs=1", "--set",
         "queries.generated_per_class=2", "--set", "queries.sampling_steps=3"],
        [os.path.join(source, "experiments/text_quickstart.toml"), "--set", "dataset.n_train=60", "--set",
         "dataset.n_validation=12", "--set", "dataset.n_pretrain=100", "--set", "model.max_length=32", "--set",
         "training.epochs=1", "--set", "training.pretrain_epochs=1", "--set",
         "evaluation.mode=pairwise"],
    ]
    for arguments in runs:
        subprocess.run(inflab + ["run"] + arguments + common, check=True, stdout=subprocess.DEVNULL)


def write_page(source, results):
    subprocess.run(["/usr/bin/python3", os.path.join(source, "framework/report/report.py"), results, "--html",
                    "--top", str(TOP)], check=True, stdout=subprocess.DEVNULL)
    return os.path.join(results, "html", "index.html")


def cells(table, column):
    return [row.find_elements("css selector", "td")[column] for row in table.find_elements("css selector", "tbody tr")]


def values(table, column):
    """The column's numbers (data-value), None for an empty cell."""
    return [float(v) if (v := c.get_attribute("data-value")) != "" else None for c in cells(table, column)]


def header_index(table, name):
    names = [th.text.split(" ")[0] if th.text.endswith(("\u25B2", "\u25BC")) else th.text
             for th in table.find_elements("css selector", "thead th")]
    check(name in names, f"column {name!r} not in {names}")
    return names.index(name)


def console_errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def check_overview(driver, url, results):
    driver.get(url)
    studies = sorted(d for d in os.listdir(results) if os.path.isdir(os.path.join(results, d))
                     and d not in ("figures", "html"))
    table = driver.find_element("id", "studies")
    shown = [c.text for c in cells(table, 0)]
    check(sorted(shown) == studies, f"overview lists {shown}, the results hold {studies}")


def check_study(driver, url, results, shots):
    driver.get(url + "#study/quickstart")
    summary = [r for r in csv.DictReader(open(os.path.join(results, "summary.csv")))
               if r["experiment"] == "quickstart" and not r["estimator"].startswith("stage:")]
    table = driver.find_element("css selector", "table.summary")
    estimators = sorted({r["estimator"] for r in summary})
    rows = table.find_elements("css selector", "tbody tr")
    check(len(rows) == len(estimators), f"summary table has {len(rows)} rows, summary.csv {len(estimators)} estimators")
    auc_column = header_index(table, "auc")
    expected = {r["estimator"]: float(r["mean"]) for r in summary if r["metric"] == "auc"}
    labels = json.loads(driver.execute_script("return JSON.stringify(INFLAB.index.labels)"))
    by_label = {labels.get(e, e): e for e in estimators}
    for row in rows:
        tds = row.find_elements("css selector", "td")
        estimator = by_label[tds[0].text.strip()]
        if estimator in expected:
            check(abs(float(tds[auc_column].get_attribute("data-value")) - expected[estimator]) < 1e-9,
                  f"{estimator}'s AUC on the page differs from summary.csv's {expected[estimator]}")
    # Sorting: one click ascending, a second descending (the header is looked up again: it is redrawn).
    table.find_elements("css selector", "thead th")[auc_column].click()
    empty = [None] * (len(estimators) - len(expected))  # rows without an AUC (the model's) sort last
    shown = values(driver.find_element("css selector", "table.summary"), auc_column)
    check(shown == sorted(expected.values()) + empty, f"AUC column after one click is {shown}, not ascending")
    driver.find_element("css selector", "table.summary").find_elements("css selector", "thead th")[auc_column].click()
    shown = values(driver.find_element("css selector", "table.summary"), auc_column)
    check(shown == sorted(expected.values(), reverse=True) + empty, f"AUC column after two clicks is {shown}, not descending")
    driver.save_screenshot(os.path.join(shots, "study_quickstart.png"))


def run_ids(driver):
    studies = json.loads(driver.execute_script("return JSON.stringify(INFLAB.index.studies)"))
    return {s["name"]: s["runs"][0]["id"] for s in studies}


def check_lists(driver, run_dir, query, examples_by_row, flipped_by_id):
    """Every estimator's lists against its score array (column `query`, or the mean over columns)."""
    tables = driver.find_elements("css selector", "table.examples")
    seen = set()
    for table in tables:
        estimator, kind = table.get_attribute("data-estimator"), table.get_attribute("data-kind")
        scores = np.load(os.path.join(run_dir, f"scores_{estimator}.npy")).astype(np.float64)
        scores = scores.reshape(len(scores), -1)
        column = scores.mean(axis=1) if query < 0 else scores[:, query]
        expected = np.sort(column)[:TOP] if kind == "helpful" else np.sort(column)[::-1][:TOP]
        score_column, row_column = header_index(table, "score"), header_index(table, "row")
        shown_scores = np.array(values(table, score_column))
        shown_rows = [int(v) for v in values(table, row_column)]
        check(len(shown_rows) == min(TOP, len(column)), f"{estimator} {kind}: {len(shown_rows)} rows, expected {TOP}")
        check(np.allclose(shown_scores, expected, rtol=1e-6, atol=0),
              f"{estimator} {kind} (query {query}): page scores {shown_scores}, array's {expected}")
        check(np.allclose(column[shown_rows], shown_scores, rtol=1e-6, atol=0),
              f"{estimator} {kind}: the rows shown do not carry the scores shown")
        text_cells = cells(table, header_index(table, "example"))
        for row, cell in zip(shown_rows, text_cells):
            example = examples_by_row[row]
            if "text" in example:
                words = " ".join(example["text"][:600].split())[:80]  # the browser collapses white space
                check(words in " ".join(cell.text.split()), f"row {row}'s text is not shown: {cell.text[:80]!r}")
        if flipped_by_id:
            flips = [c.text for c in cells(table, header_index(table, "flipped"))]
            ids = [int(v) for v in values(table, header_index(table, "id"))]
            check(flips == ["flipped" if flipped_by_id[i] else "no" for i in ids], f"{estimator}: flips {flips} wrong")
        seen.add(estimator)
    return seen


def check_agreement(driver, run_dir, estimators, query):
    rows = driver.find_elements("css selector", "table.agreement tr")[1:]
    columns = {}
    for e in estimators:
        s = np.load(os.path.join(run_dir, f"scores_{e}.npy")).astype(np.float64)
        s = s.reshape(len(s), -1)
        columns[e] = s.mean(axis=1) if query < 0 else s[:, query]
    names = list(json.loads(driver.execute_script(f"return JSON.stringify(INFLAB.runs[{driver.current_run}].agreement['{query}'].estimators)")))
    for i, row in enumerate(rows):
        for j, td in enumerate(row.find_elements("css selector", "td")):
            if td.text == "":
                continue
            rho = scipy.stats.spearmanr(columns[names[i]], columns[names[j]]).correlation
            check(abs(float(td.text) - rho) <= 0.006, f"agreement {names[i]} vs {names[j]}: {td.text}, scipy {rho:.4f}")


def check_images(driver, what):
    images = driver.find_elements("css selector", "img")
    broken = [i.get_attribute("src") for i in images
              if not driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)]
    check(not broken, f"{what}: images that did not load: {broken[:3]}")
    return len(images)


def check_run(driver, url, results, study, run_id, shots, query=-1):
    """The run's page for `query` (-1: the mean query; "last": the last query the page offers)."""
    run_dir = os.path.join(results, study, "run")
    driver.get(url + f"#run/{run_id}")
    driver.find_element("css selector", "table.examples")  # waits for data/run<N>.js (implicit wait)
    if query == "last":
        offered = json.loads(driver.execute_script(f"return JSON.stringify(INFLAB.runs[{run_id}].queries)"))
        query = offered[-1]["index"]
        check(query >= 0, f"{study}: a pairwise run's page offers no single query")
    driver.get(url + f"#run/{run_id}/{query}")
    table = driver.find_element("css selector", "table.examples")
    check(table.get_attribute("data-query") == str(query), f"{study}: the page shows query {table.get_attribute('data-query')}")
    driver.current_run = run_id
    examples = [json.loads(line) for line in open(os.path.join(run_dir, "examples.jsonl"))]
    by_row = {e["row"]: e for e in examples if e["split"] == "train"}
    flipped = {}
    scores_csv = os.path.join(run_dir, "scores.csv")
    if os.path.exists(scores_csv):
        flipped = {int(r["example_id"]): r["flipped"] == "1" for r in csv.DictReader(open(scores_csv))}
    metrics = {r["estimator"] for r in csv.DictReader(open(os.path.join(run_dir, "metrics.csv")))} - {"model"}
    seen = check_lists(driver, run_dir, query, by_row, flipped)
    check(seen == metrics, f"{study}: lists for {sorted(seen)}, the run scored {sorted(metrics)}")
    check_agreement(driver, run_dir, sorted(metrics), query)
    images = check_images(driver, study)
    driver.save_screenshot(os.path.join(shots, f"run_{study}_query{query}.png"))
    return images


def check_explain(driver, build, source, results, cache, work, shots):
    """`./inflab explain IDX ... --json --html DIR`: the page lists, per query, the rows and scores
    explain printed."""
    quickstart = QUICKSTART_SETS
    index = os.path.join(work, "index")
    subprocess.run([os.path.join(build, "bin", "inflab"), "--quiet", "--threads", "1", "index", "build",
                    os.path.join(source, "experiments/quickstart.toml"), *quickstart, "--cache", cache, "--out", index],
                   check=True, stdout=subprocess.DEVNULL)
    page = os.path.join(work, "explain_html")
    answer = subprocess.run([os.path.join(source, "inflab"), "--quiet", "--threads", "1", "explain", index,
                             "--validation", "0", "--validation", "5", "--top", str(TOP), "--json", "--html", page],
                            check=True, capture_output=True, text=True).stdout
    entries = json.loads(answer)
    check(len(entries) == 2, f"explain printed {len(entries)} queries, asked for 2")
    for q, entry in enumerate(entries):
        driver.get("about:blank")
        driver.get("file://" + os.path.join(page, "index.html") + f"#run/0/{q}")
        for kind in ("helpful", "harmful"):
            table = driver.find_element("css selector", f"table.examples[data-kind={kind}]")
            rows = [int(v) for v in values(table, header_index(table, "row"))]
            scores = values(table, header_index(table, "score"))
            check(rows == [r["row"] for r in entry[kind]], f"explain page query {q} {kind}: rows {rows}")
            check(np.allclose(scores, [r["score"] for r in entry[kind]], rtol=1e-6), f"explain page {kind} scores")
    driver.save_screenshot(os.path.join(shots, "explain.png"))
    check(not console_errors(driver), "console errors on the explain page")


def main():
    build, source = sys.argv[1], sys.argv[2]
    shots = sys.argv[3] if len(sys.argv) > 3 else os.path.join(build, "html_report_screenshots")
    os.makedirs(shots, exist_ok=True)
    driver = browser()
    driver.implicitly_wait(10)
    work = tempfile.mkdtemp(prefix="inflab-html-")
    try:
        results, cache = os.path.join(work, "results"), os.path.join(work, "cache")
        make_runs(build, source, results, cache)
        url = "file://" + write_page(source, results)
        check_overview(driver, url, results)
        check_study(driver, url, results, shots)
        ids = run_ids(driver)
        images = check_run(driver, url, results, "quickstart", ids["quickstart"], shots)
        check(images >= 2 * TOP, f"quickstart's run page shows {images} images; Fashion-MNIST thumbnails expected")
        check(driver.find_elements("css selector", "svg.loo"), "quickstart has leave_one_out.csv but no scatter")
        check_run(driver, url, results, "class_detection_diffusion_style", ids["class_detection_diffusion_style"], shots, query=1)
        # Choosing another query in the selector redraws the lists for that query.
        from selenium.webdriver.support.ui import Select
        Select(driver.find_element("id", "query")).select_by_value("2")
        check(driver.find_element("css selector", "table.examples").get_attribute("data-query") == "2",
              "the query selector did not redraw the lists")
        check_run(driver, url, results, "text_quickstart", ids["text_quickstart"], shots, query="last")
        # A query the page does not keep: a note, and the mean query's lists.
        driver.get(url + f"#run/{ids['text_quickstart']}/11")
        check("not on this page" in driver.find_element("id", "query-missing").text, "no note for a query not kept")
        errors = console_errors(driver)
        check(not errors, f"console errors: {errors}")
        # A run whose score arrays are gone (results/ does not keep them) says so instead of lists.
        for name in os.listdir(os.path.join(results, "text_quickstart", "run")):
            if name.startswith("scores_"):
                os.remove(os.path.join(results, "text_quickstart", "run", name))
        url = "file://" + write_page(source, results)
        driver.get("about:blank")  # a new document: the rewritten data, not the one already loaded
        driver.get(url + f"#run/{ids['text_quickstart']}")
        check("not in the results folder" in driver.find_element("id", "no-scores").text, "no note on missing arrays")
        check(not console_errors(driver), "console errors on the page without arrays")
        check_explain(driver, build, source, results, cache, work, shots)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.dirname(url[7:])) for f in fs)
        print(f"test_html_report: 3 studies, page {size / 1e6:.2f} MB, screenshots in {shots}")
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
