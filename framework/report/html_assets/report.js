// inflab report: draws the study and run pages from data/index.js and data/run<N>.js (written by
// framework/report/html.py). No library and no network: the page opens from file://. Text from the
// data is set with textContent only.
"use strict";

const index = INFLAB.index;
const main = document.getElementById("main");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined)
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function label(estimator) { return index.labels[estimator] || estimator; }

function format(value, digits = 4) {
  if (value === null || value === undefined || value === "") return "";
  const x = Number(value);
  if (!Number.isFinite(x)) return String(value);
  if (x !== 0 && (Math.abs(x) >= 1e5 || Math.abs(x) < 1e-3)) return x.toExponential(2);
  return String(Number(x.toPrecision(digits)));
}

// A table whose columns sort on a click (numbers as numbers, empty cells last). A cell is a value,
// a Node, or {text, value, cls, node}.
function sortableTable(columns, rows, attrs) {
  const head = el("tr", {}, columns.map((c, i) => el("th", {class: "sortable", "data-column": i, text: c})));
  const body = el("tbody");
  const cells = rows.map(row => row.map(cell => {
    if (cell instanceof Node) return {node: cell, value: cell.textContent};
    if (cell !== null && typeof cell === "object") return cell;
    return {text: cell === null || cell === undefined ? "" : String(cell), value: cell};
  }));
  const draw = order => {
    body.replaceChildren(...order.map(row => el("tr", {}, row.map(cell => {
      const numeric = typeof cell.value === "number";
      const td = el("td", {class: (cell.cls || "") + (numeric ? " num" : ""),
                           "data-value": cell.value === null || cell.value === undefined ? "" : cell.value});
      if (cell.node) td.append(cell.node); else td.textContent = cell.text !== undefined ? cell.text : format(cell.value);
      return td;
    }))));
  };
  draw(cells);
  head.addEventListener("click", event => {
    const th = event.target.closest("th");
    if (!th) return;
    const column = Number(th.dataset.column);
    const ascending = th.dataset.sort !== "asc";
    head.querySelectorAll("th").forEach(h => h.removeAttribute("data-sort"));
    th.dataset.sort = ascending ? "asc" : "desc";
    const key = cell => {
      const v = cell.value;
      if (v === null || v === undefined || v === "") return null;
      return typeof v === "number" ? v : (Number.isFinite(Number(v)) ? Number(v) : String(v));
    };
    const sorted = cells.slice().sort((a, b) => {
      const x = key(a[column]), y = key(b[column]);
      if (x === null) return y === null ? 0 : 1;
      if (y === null) return -1;
      const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    });
    draw(sorted);
  });
  return el("table", attrs || {}, el("thead", {}, head), body);
}

function estimatorCell(estimator) {
  return {node: el("span", {}, el("span", {class: "swatch", style: `background:${index.colours[estimator] || "#ccc"}`}),
                   label(estimator)), value: label(estimator)};
}

function figures(list) {
  return el("div", {class: "figures"}, list.map(f => el("a", {href: f}, el("img", {src: f, alt: f, loading: "lazy"}))));
}

// ---------------------------------------------------------------------------------------------

function overview() {
  document.title = "inflab report: " + index.root;
  const rows = index.studies.map(s => [
    {node: el("a", {href: "#study/" + s.name, text: s.name}), value: s.name},
    {value: s.runs.length}, {value: s.runs.filter(r => r.has_scores).length},
    s.paper_task ? `${s.paper_task.title} (${s.paper_task.model})` : ""]);
  main.replaceChildren(
    el("h1", {text: `Studies in ${index.root}`}),
    el("p", {class: "note", text: "Each study is an experiment file run over seeds (and ranks or sizes). Its page " +
      "has the summary over runs with 95% intervals, paired differences and costs; each run's page lists the " +
      "training examples each method finds most helpful and most harmful."}),
    sortableTable(["study", "runs", "runs with scores", "paper's Table 2 task"], rows, {id: "studies"}),
    index.figures.length ? el("h2", {text: "Figures"}) : null, figures(index.figures));
}

const SCORE_NOTE = "Sign: a negative score means up-weighting the training example lowers the query's " +
  "loss (it helps the query); positive means it hurts. Scale: an influence score is the change of the " +
  "query's loss per unit of up-weighting, so it is comparable between training examples of one method " +
  "and query, not between methods (Hessian-free has no inverse curvature, unit-normalised methods are " +
  "cosines, TracIn sums over checkpoints). Compare methods by rank agreement, AUC or LDS instead.";

function studyPage(name) {
  const study = index.studies.find(s => s.name === name);
  if (!study) { main.replaceChildren(el("p", {text: `No study named ${name}.`})); return; }
  document.title = "inflab: " + name;
  const parts = [el("p", {}, el("a", {href: "#", text: "all studies"})), el("h1", {text: name})];
  if (study.paper_task)
    parts.push(el("p", {class: "note", text: `Reproduces the paper's Table 2 task "${study.paper_task.title}" ` +
      `(${study.paper_task.model}); the paper's numbers stand beside DataInf's and Hessian-free's rows.`}));
  const settings = new Map();
  for (const row of study.summary) {
    const key = `${row.experiment}|${row.rank}|${row.n_train}`;
    if (!settings.has(key)) settings.set(key, []);
    settings.get(key).push(row);
  }
  for (const [key, rows] of settings) {
    const [experiment, rank, n] = key.split("|");
    const metrics = [...new Set(rows.filter(r => !r.estimator.startsWith("stage:")).map(r => r.metric))];
    metrics.sort((a, b) => (a === "seconds") - (b === "seconds") || a.localeCompare(b));
    const estimators = [...new Set(rows.filter(r => !r.estimator.startsWith("stage:")).map(r => r.estimator))];
    const hasPaper = rows.some(r => r.paper !== undefined);
    const columns = ["estimator", ...metrics.flatMap(m => hasPaper && m.startsWith("class_") ? [m, m + " (paper)"] : [m]), "runs"];
    const body = estimators.map(e => {
      const mine = Object.fromEntries(rows.filter(r => r.estimator === e).map(r => [r.metric, r]));
      const cells = [estimatorCell(e)];
      for (const m of metrics) {
        const r = mine[m];
        cells.push(r ? {text: format(r.mean) + (r.ci95 ? ` ± ${format(r.ci95, 2)}` : ""), value: Number(r.mean)} : {text: "", value: null});
        if (hasPaper && m.startsWith("class_")) cells.push(r && r.paper !== undefined ? {value: r.paper, cls: "paper"} : {text: "", value: null});
      }
      cells.push({value: Math.max(...Object.values(mine).map(r => Number(r.runs)))});
      return cells;
    });
    parts.push(el("h2", {text: `${experiment}: rank ${rank}, n = ${n}`}),
               sortableTable(columns, body, {class: "summary", "data-setting": key}));
    const stages = rows.filter(r => r.estimator.startsWith("stage:"));
    if (stages.length)
      parts.push(el("h3", {text: "Cost of the stages (seconds, runs that computed them)"}),
                 sortableTable(["stage", "seconds", "± 95%", "runs"],
                               stages.map(r => [r.estimator.slice(6), {value: Number(r.mean)}, {value: r.ci95 === "" ? null : Number(r.ci95)}, {value: Number(r.runs)}]),
                               {class: "stages"}));
  }
  if (study.paired.length)
    parts.push(el("h2", {text: "Paired differences (each estimator minus a baseline, paired over seeds)"}),
               sortableTable(["setting", "rank", "metric", "estimator", "baseline", "mean difference", "95% low", "95% high", "runs"],
                 study.paired.map(r => [r.experiment, {value: Number(r.rank)}, r.metric, estimatorCell(r.estimator), label(r.baseline),
                   {value: Number(r.mean_difference)}, {value: Number(r.ci_low)}, {value: Number(r.ci_high)}, {value: Number(r.runs)}]),
                 {class: "paired"}));
  if (study.class_detection.length)
    parts.push(el("h2", {text: "Class detection over test examples and seeds"}),
               sortableTable(["setting", "estimator", "AUC", "95% low", "95% high", "AUC - Hessian-free", "recall", "AUC by |score|", "units"],
                 study.class_detection.map(r => [r.experiment, estimatorCell(r.estimator), {value: Number(r.auc)}, {value: Number(r.auc_low)},
                   {value: Number(r.auc_high)}, r.auc_minus_hessian_free, {value: Number(r.recall)}, r.auc_by_magnitude, {value: Number(r.units)}]),
                 {class: "class-detection"}));
  if (study.figures.length) parts.push(el("h2", {text: "Figures"}), figures(study.figures));
  parts.push(el("h2", {text: "Runs"}),
             sortableTable(["run", "setting", "mode", "score arrays"], study.runs.map(r => [
               {node: el("a", {href: "#run/" + r.id, text: r.run}), value: r.run}, r.setting, r.mode,
               r.has_scores ? "kept" : "not kept"]), {id: "runs"}));
  main.replaceChildren(...parts);
}

// ---------------------------------------------------------------------------------------------

// Loads data/<name>.js once (it assigns INFLAB.runs[N] or INFLAB.images[N]), then calls `then`.
function loadScript(name, loaded, then) {
  if (loaded()) return then();
  const script = el("script", {src: `data/${name}.js`});
  script.onload = then;
  script.onerror = () => main.replaceChildren(el("p", {text: `data/${name}.js is missing: rerun ./inflab report --html.`}));
  document.body.append(script);
}

// A run's data, and the study's thumbnails when its examples are images.
function loadRun(id, then) {
  loadScript(`run${id}`, () => INFLAB.runs[id], () => {
    const run = INFLAB.runs[id], bundle = run.image_bundle;
    if (bundle === undefined) return then(run);
    loadScript(`images${bundle}`, () => INFLAB.images[bundle], () => then(run));
  });
}

function imageSource(run, key) { return run.image_bundle === undefined ? key : INFLAB.images[run.image_bundle][key]; }

function exampleNode(example, run) {
  const node = el("div", {});
  if (example.image) node.append(el("img", {class: "thumb", src: imageSource(run, example.image), alt: `example ${example.id}`}));
  if (example.text !== undefined) node.append(el("div", {text: example.text}));
  if (example.response !== undefined) node.append(el("div", {text: "→ " + example.response}));
  if (example.answer !== undefined) node.append(el("div", {text: "model's answer: " + example.answer}));
  return node;
}

function exampleList(run, estimator, query, kind) {
  const entries = run.top[estimator][query][kind];
  // Mislabel runs (scores.csv): the true class, the label trained on and whether it was flipped.
  const noisy = entries.some(([row]) => run.examples[row].flipped !== undefined);
  const rows = entries.map(([row, score], i) => {
    const e = run.examples[row];
    const flipped = e.flipped ? "flipped" : "no";
    return [{value: i + 1}, {value: row}, {value: e.id}, {value: e.true_label ?? e.label},
            ...(noisy ? [{value: e.observed_label}, {text: flipped, value: flipped, cls: e.flipped ? "flipped" : ""}] : []),
            {node: exampleNode(e, run), value: e.text || ""}, {value: score}];
  });
  const columns = ["rank", "row", "id", "class", ...(noisy ? ["trained as", "flipped"] : []), "example", "score"];
  return sortableTable(columns, rows, {class: "examples", "data-estimator": estimator, "data-kind": kind, "data-query": query});
}

function agreementTable(run, query) {
  const a = run.agreement[query];
  return el("table", {class: "agreement"},
    el("tr", {}, el("th", {text: "Spearman"}), a.estimators.map(e => el("th", {text: label(e)}))),
    a.estimators.map((e, i) => el("tr", {}, el("th", {text: label(e)}), a.matrix[i].map(v => {
      const shade = v === null ? "#fff" : `hsl(${v >= 0 ? 210 : 0}, 70%, ${100 - 40 * Math.abs(v)}%)`;
      return el("td", {class: "num", style: `background:${shade}`, text: v === null ? "" : v.toFixed(2)});
    }))));
}

function looScatter(run, estimator) {
  const xs = run.loo_points.predicted[estimator], ys = run.loo_points.measured;
  const w = 320, h = 240, pad = 36;
  const range = v => { const f = v.filter(Number.isFinite); return [Math.min(...f), Math.max(...f)]; };
  const [x0, x1] = range(xs), [y0, y1] = range(ys);
  const sx = x => pad + (w - 2 * pad) * (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5);
  const sy = y => h - pad - (h - 2 * pad) * (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("class", "loo");
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text) n.textContent = text;
    svg.append(n);
  };
  add("rect", {x: pad, y: pad, width: w - 2 * pad, height: h - 2 * pad, fill: "none", stroke: "#999"});
  xs.forEach((x, i) => { if (Number.isFinite(x) && Number.isFinite(ys[i]))
    add("circle", {cx: sx(x), cy: sy(ys[i]), r: 3, fill: index.colours[estimator] || "#333", "fill-opacity": 0.7}); });
  add("text", {x: w / 2, y: h - 6, "text-anchor": "middle", "font-size": 11}, `${label(estimator)} score`);
  add("text", {x: 10, y: h / 2, "font-size": 11, transform: `rotate(-90 10 ${h / 2})`, "text-anchor": "middle"}, "measured change of the loss");
  return svg;
}

function runPage(id, query) {
  loadRun(id, run => {
    document.title = `inflab: ${run.study}/${run.run}`;
    const parts = [el("p", {}, el("a", {href: "#", text: "all studies"}), " / ",
                      el("a", {href: "#study/" + run.study, text: run.study})),
                   el("h1", {text: `${run.study} / ${run.run}`}),
                   el("p", {class: "note", text: `${run.mode} mode, ${run.n_train} training examples, ${run.n_query} queries; ` +
                     `commit ${run.commit}, ${run.threads} thread(s).`})];
    const metrics = [...new Set(Object.values(run.metrics).flatMap(m => Object.keys(m)))];
    if (run.mode === "explain") parts.splice(0, 3, el("h1", {text: `inflab explain: ${run.run}`}),
      el("p", {class: "note", text: `${run.n_query} queries scored against the index by ${label(run.estimators[0])}.`}));
    else parts.push(el("h2", {text: "Metrics of this run"}),
               sortableTable(["estimator", ...metrics], Object.keys(run.metrics).map(e =>
                 [e === "model" ? "fine-tuned model" : estimatorCell(e), ...metrics.map(m => ({value: run.metrics[e][m] ?? null}))]),
                 {class: "run-metrics"}));
    if (run.loo_points) {
      const choice = el("select", {id: "loo-estimator"}, Object.keys(run.loo_points.predicted).map(e => el("option", {value: e, text: label(e)})));
      const holder = el("div", {}, looScatter(run, choice.value));
      choice.addEventListener("change", () => holder.replaceChildren(looScatter(run, choice.value)));
      parts.push(el("h2", {text: "Leave-one-out: measured change of the loss against each score"}),
                 el("p", {class: "note", text: "Each point is a training example removed and the model retrained; LDS and LOO correlations are in the metrics table above."}),
                 choice, holder);
    }
    if (!run.has_scores) {
      parts.push(el("p", {class: "note", id: "no-scores", text: "This run's score arrays are not in the results folder " +
        "(results/ keeps summaries, not bulk arrays). `./inflab run EXPERIMENT --out DIR --no-resume` writes them again " +
        "from the stage cache; then rerun `./inflab report DIR --html`."}));
      main.replaceChildren(...parts);
      return;
    }
    const current = run.queries.some(q => String(q.index) === String(query)) ? String(query) : String(run.queries[0].index);
    const select = el("select", {id: "query"}, run.queries.map(q => el("option", {value: q.index, text: q.title +
      (q.example && q.example.label !== undefined ? ` (class ${q.example.label})` : "")})));
    select.value = current;
    select.addEventListener("change", () => { location.hash = `run/${id}/${select.value}`; });
    const chosen = run.queries.find(q => String(q.index) === current);
    parts.push(el("h2", {text: "Most helpful and most harmful training examples"}), el("p", {class: "note", text: SCORE_NOTE}),
               el("label", {}, "Query: ", select));
    if (query !== undefined && query !== "" && String(query) !== current)
      parts.push(el("p", {class: "note", id: "query-missing", text: `Query ${query} is not on this page (it keeps the mean ` +
        "query and the first queries of each class: ./inflab report DIR --html --queries-per-class N keeps more)."}));
    if (chosen.example) parts.push(el("div", {class: "query"}, el("b", {text: `Query ${chosen.index}` + (chosen.example.label !== undefined && chosen.example.label !== null ? `, class ${chosen.example.label}` : "")}), exampleNode(chosen.example, run)));
    else parts.push(el("p", {class: "note", text: run.mode === "aggregate" ? "The query is the mean gradient of the validation examples." :
      "Scores averaged over every query (for a method linear in the query gradient, the mean query's scores)."}));
    for (const estimator of run.scored_estimators)
      parts.push(el("h3", {text: label(estimator)}),
                 el("div", {class: "lists"}, el("section", {}, el("b", {text: `Most helpful (${run.top[estimator][current].helpful.length}, most negative)`}),
                                                exampleList(run, estimator, current, "helpful")),
                                 el("section", {}, el("b", {text: `Most harmful (${run.top[estimator][current].harmful.length}, most positive)`}),
                                                exampleList(run, estimator, current, "harmful"))));
    if (run.agreement[current])
      parts.push(el("h2", {text: "How the methods agree (Spearman rank correlation over training examples, this query)"}),
                 agreementTable(run, current));
    main.replaceChildren(...parts);
  });
}

function route() {
  const [page, id, query] = decodeURIComponent(location.hash.slice(1) || index.start || "").split("/");
  if (page === "study") studyPage(id);
  else if (page === "run") runPage(Number(id), query);
  else overview();
  window.scrollTo(0, 0);
}

document.getElementById("root").textContent = index.root;
window.addEventListener("hashchange", route);
route();
