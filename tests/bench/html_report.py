#!/usr/bin/env python3
"""Size of a report page and how long headless Chromium takes to draw each of its views.

    /usr/bin/python3 tests/bench/html_report.py RESULTS_DIR/html [--runs N]

Opens the overview, every study page and the first N run pages (default: all) each as a new
document from file:// and records, per view, the milliseconds from navigation start until the
view's content is in the page (performance.now() once the overview's table, the study's summary or
the run's lists or metrics exist). Prints the folder's size, the median and the slowest view.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from test_html_report import browser  # noqa: E402  (the same Chromium set-up as the test)

READY = {"overview": "#studies", "study": "#runs", "run": "table.run-metrics"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html")
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()
    page = os.path.abspath(os.path.join(args.html, "index.html"))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(args.html) for f in files)
    driver = browser()
    driver.implicitly_wait(20)
    try:
        driver.get("file://" + page)
        studies = json.loads(driver.execute_script("return JSON.stringify(INFLAB.index.studies)"))
        views = [("overview", "")] + [("study", "#study/" + s["name"]) for s in studies]
        runs = [r["id"] for s in studies for r in s["runs"]]
        views += [("run", f"#run/{r}") for r in runs[: args.runs]]
        times = []
        for kind, fragment in views:
            driver.get("about:blank")
            driver.get("file://" + page + fragment)
            driver.find_element("css selector", READY[kind])
            times.append((driver.execute_script("return performance.now()"), kind, fragment))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    ms = sorted(t for t, _, _ in times)
    slowest = max(times)
    print(f"{args.html}: {size / 1e6:.2f} MB ({size} bytes); {len(times)} views, median {statistics.median(ms):.0f} ms, "
          f"slowest {slowest[0]:.0f} ms ({slowest[1]} {slowest[2] or 'overview'}); console errors: {len(errors)}")


if __name__ == "__main__":
    main()
