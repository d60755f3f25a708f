// Model cards as pages: #/models lists every served task, #/models/TASK/VERSION shows
// what the version was trained on, what it is for, where it fails, its held-out
// metrics and evaluation plots, its licence and how to cite it — all from the registry.

import { h, fill, num, pct, words, sentence } from "./dom.js";
import { json, ApiError } from "./api.js";
import { loadTasks } from "./catalogue.js";

function problemBox(err) {
  const problem = err instanceof ApiError ? err.problem : { detail: String(err) };
  return h("div", { class: "notice bad", role: "alert" }, h("strong", {}, problem.title || "Cannot read the models"), h("p", { class: "detail" }, problem.detail || ""));
}

function headlineMetric(card) {
  if (card.held_out_error) {
    return [`${num(card.held_out_error.value, 2)}${card.held_out_error.unit === "deg" ? "°" : ""}`, `held-out ${card.held_out_error.metric.replace(/_deg$/, "").toUpperCase()}`];
  }
  const m = card.metrics || {};
  for (const [key, label] of [["accuracy", "accuracy"], ["vote_fraction_mae", "vote-fraction MAE"], ["mae_deg", "MAE"]]) {
    if (typeof m[key] === "number") return [num(m[key], 3), `held-out ${label}`];
  }
  return ["", ""];
}

/** #/models */
export async function showModels(view) {
  fill(view, h("h1", { id: "models-title" }, "Models"), h("p", { class: "muted", role: "status" }, "Loading the model cards…"));
  let models;
  let tasks;
  try {
    [{ data: models }, tasks] = await Promise.all([json("v1/models"), loadTasks()]);
  } catch (err) {
    fill(view, h("h1", { id: "models-title" }, "Models"), problemBox(err));
    return;
  }
  const titles = Object.fromEntries(tasks.map((t) => [t.name, t.title]));
  fill(view,
    h("div", { class: "intro" }, h("h1", { id: "models-title" }, "Models"),
      h("p", { class: "lead" }, "Each question is answered by an ensemble published as a numbered version. A card says what it was trained on, what it is good for, where it fails and how it scored on images it never saw.")),
    h("div", { class: "cards" }, models.map((card) => {
      const [metric, what] = headlineMetric(card);
      return h("a", { class: "card-link", href: `#/models/${encodeURIComponent(card.task)}/${card.version}` },
        h("h2", { style: { fontSize: "1.05rem" } }, titles[card.task] || sentence(card.task)),
        h("p", { class: "muted", style: { margin: 0 } }, `${card.task} · version ${card.version}${card.latest ? " (serving)" : ""} · ${card.members.length} members`),
        metric ? h("p", { class: "metric" }, metric) : null,
        what ? h("p", { class: "muted", style: { margin: 0 } }, what) : null);
    })));
}

function metricText(value) {
  if (Number.isInteger(value)) return value.toLocaleString("en");
  if (value !== 0 && Math.abs(value) < 0.001) return value.toExponential(1);
  return num(value, 4);
}

// Metric names as the trainer writes them (rms_deg, n_val) → words a reader knows.
const METRIC_LABELS = {
  n: "held-out images",
  n_test: "held-out test images",
  n_val: "validation images",
  n_train: "training images",
  within_5deg: "share within 5°",
  bias_m: "bias correction: slope m",
  bias_b: "bias correction: offset b (°)",
  parity_max_abs_diff: "ONNX export vs. Keras: largest difference",
  mc_samples: "MC dropout samples",
  error_floor: "error model: floor a (°)",
  error_spread_scale: "error model: factor k on the spread",
  error_coverage_1sigma: "truths within the stated ±1σ",
  error_coverage_2sigma: "truths within the stated ±2σ",
  error_median_deg: "median stated 1σ (°)",
  error_rms_deg: "RMS of the stated 1σ (°)",
  supported_accuracy: "accuracy, supported classes",
  supported_macro_recall: "macro recall, supported classes",
  n_supported: "held-out images of supported classes",
  unsupported_top_share: "share answered with an unsupported class",
};
const METRIC_WORDS = { rms: "RMS", mae: "MAE", nll: "NLL", f1: "F1", val: "validation", deg: "(°)", q0: "q₀" };

/** rms_deg → "RMS (°)", val_rms_deg → "Validation RMS (°)", n_val → "Validation images". */
export function metricLabel(key) {
  const text = (METRIC_LABELS[key] || key.split("_").map((w) => METRIC_WORDS[w] || w).join(" "))
    .replace(/ \(°\)(.+)$/, "$1 (°)"); // "MAE (°) uncalibrated" → "MAE uncalibrated (°)"
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function scalarRows(metrics) {
  // [label, value, kind]: numbers line up on the right; sentences (definitions) wrap.
  const rows = [];
  for (const [key, value] of Object.entries(metrics || {})) {
    if (typeof value === "number") rows.push([metricLabel(key), metricText(value), "num"]);
    else if (typeof value === "string" && value.length < 400) rows.push([metricLabel(key), value, "wrap"]);
  }
  return rows;
}

function nestedTables(metrics) {
  // Per-class or per-bin breakdowns: {label: number} objects.
  const out = [];
  for (const [key, value] of Object.entries(metrics || {})) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      const entries = Object.entries(value).filter(([, v]) => typeof v === "number" || v === null);
      if (entries.length >= 2 && entries.length === Object.keys(value).length) {
        out.push(h("details", { class: "more" }, h("summary", {}, metricLabel(key)),
          h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": metricLabel(key) },
            h("table", {}, h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, words(k)), h("td", { class: "num" }, v === null ? "–" : metricText(v)))))))));
      }
    }
  }
  return out;
}

function factText(value, key = "") {
  // Seeds are names, not quantities: 1000003, not 1,000,003.
  return typeof value === "number" && !/seed/.test(key) ? metricText(value) : String(value);
}

function factsList(data) {
  const items = [];
  for (const [key, value] of Object.entries(data || {})) {
    if (value === null || value === undefined) continue;
    if (Array.isArray(value)) {
      // [45, 90] is a range, not an object with keys 0 and 1.
      const flat = value.filter((v) => ["string", "number", "boolean"].includes(typeof v));
      if (!flat.length) continue;
      const joiner = flat.length === 2 && /range|size/.test(key) ? "–" : ", ";
      items.push(h("dt", {}, metricLabel(key)), h("dd", {}, flat.slice(0, 24).map((v) => factText(v, key)).join(joiner)));
    } else if (typeof value === "object") {
      const flat = Object.entries(value).filter(([, v]) => ["string", "number", "boolean"].includes(typeof v));
      if (!flat.length) continue;
      items.push(h("dt", {}, metricLabel(key)), h("dd", {}, flat.slice(0, 12).map(([k, v]) => `${words(k)}: ${factText(v, key)}`).join(" · ")));
    } else {
      items.push(h("dt", {}, metricLabel(key)), h("dd", {}, factText(value, key)));
    }
  }
  return h("dl", { class: "facts" }, items);
}

const PLOT_TEXT = {
  "pred_vs_true.png": "Predicted against true values on the held-out set",
  "residuals.png": "Errors (predicted − true) against the true value",
  "confusion.png": "Confusion matrix on the held-out set",
  "reliability.png": "Reliability: predicted probability against observed frequency",
  "failures.png": "The held-out images it got most wrong",
  "labels.png": "Per-label accuracy, precision and recall",
  "vote_fractions.png": "Predicted against volunteer vote fractions",
};

/** #/models/TASK/VERSION */
export async function showModelCard(view, task, version) {
  fill(view, h("p", { class: "muted", role: "status" }, "Loading the model card…"));
  let card;
  try {
    ({ data: card } = await json(`v1/models/${encodeURIComponent(task)}/${encodeURIComponent(version)}`));
  } catch (err) {
    fill(view, h("p", {}, h("a", { href: "#/models" }, "← All models")), h("h1", { id: "models-title" }, `${task} v${version}`), problemBox(err));
    return;
  }
  const base = `v1/models/${encodeURIComponent(card.task)}/${card.version}/files/`;
  const plots = Object.keys(card.files || {}).filter((f) => f.endsWith(".png"));
  const training = card.training || {};
  const data = training.data || {};
  const [metric, what] = headlineMetric(card);
  fill(view,
    h("p", {}, h("a", { href: "#/models" }, "← All models")),
    h("div", { class: "modelcard" },
      h("div", { class: "intro" },
        h("h1", { id: "models-title" }, `${card.title || sentence(card.task)} — version ${card.version}`),
        h("p", { class: "lead" }, card.description || ""),
        h("p", { class: "muted" }, `Task ${card.task} · published ${new Date(card.created).toISOString().slice(0, 10)}${card.latest ? " · the version serving now" : ""} · ${card.members.length} ensemble members · `, h("a", { href: `v1/models/${encodeURIComponent(card.task)}/${card.version}` }, "this card as JSON"))),
      h("section", { "aria-labelledby": "mc-use" }, h("h2", { id: "mc-use" }, "Intended use"), h("p", {}, card.intended_use || "Not stated for this version.")),
      h("section", { "aria-labelledby": "mc-limits" }, h("h2", { id: "mc-limits" }, "Known limitations"),
        card.limitations?.length ? h("ul", {}, card.limitations.map((l) => h("li", {}, l))) : h("p", { class: "muted" }, "None recorded."),
        card.unsupported_classes?.length ? h("div", { class: "notice warn" }, h("strong", {}, "Unsupported classes"), h("p", {}, `${card.unsupported_classes.map(words).join(", ")}: too few training examples to trust the model on them.`)) : null,
        // The task definition's rules: when an answer says it does not apply, and from what.
        card.applicability?.length ? h("div", { class: "notice" }, h("strong", {}, "When an answer does not apply"),
          h("ul", {}, card.applicability.map((r) => h("li", {},
            `${sentence(r.task)}: ${r.output ? `${words(r.output)} at least ${pct(r.at_least)}` : `top class not ${r.top_not_in.map(words).join(" or ")}, at least ${pct(r.at_least)}`} (run in the same job).`)))) : null),
      h("section", { "aria-labelledby": "mc-metrics" }, h("h2", { id: "mc-metrics" }, "Held-out metrics"),
        metric ? h("p", { class: "headline" }, metric, h("span", { class: "pm" }, ` ${what}`)) : null,
        h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Held-out metrics" },
          h("table", {}, h("tbody", {}, scalarRows(card.metrics).map(([k, v, kind]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", { class: kind }, v)))))),
        nestedTables(card.metrics)),
      plots.length ? h("section", { "aria-labelledby": "mc-plots" }, h("h2", { id: "mc-plots" }, "Evaluation plots"),
        h("div", { class: "plots" }, plots.map((f) => h("figure", {},
          h("a", { href: base + encodeURIComponent(f) }, h("img", { src: base + encodeURIComponent(f), alt: PLOT_TEXT[f] || sentence(f.replace(/\.png$/, "")), loading: "lazy" })),
          h("figcaption", {}, PLOT_TEXT[f] || sentence(f.replace(/\.png$/, ""))))))) : null,
      h("section", { "aria-labelledby": "mc-data" }, h("h2", { id: "mc-data" }, "Training data"),
        factsList(data.train || data),
        training.command ? [h("p", { class: "sub" }, "Reproduce it with:"), h("pre", { class: "cmd" }, training.command)] : null),
      h("section", { "aria-labelledby": "mc-members" }, h("h2", { id: "mc-members" }, "Ensemble members"),
        h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Ensemble members" },
          h("table", {},
            h("thead", {}, h("tr", {}, ["member", "architecture", "parameters", "training subset"].map((c, i) => h("th", { scope: "col", class: i > 1 ? "num" : null }, c)))),
            h("tbody", {}, card.members.map((m) => h("tr", {}, h("th", { scope: "row" }, m.name), h("td", {}, m.architecture), h("td", { class: "num" }, m.params ? m.params.toLocaleString("en") : "–"), h("td", { class: "num" }, m.subset_fraction ? `${Math.round(m.subset_fraction * 100)} %` : "all"))))))),
      h("section", { "aria-labelledby": "mc-license" }, h("h2", { id: "mc-license" }, "Licence and citation"),
        h("p", {}, card.license || "No licence recorded."),
        card.citation ? h("blockquote", { class: "cite" }, card.citation) : null)));
}
