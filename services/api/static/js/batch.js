// The catalog view: upload a CSV catalog (or a JSON list, or a zip of images with
// catalog.csv), follow its progress bar, see the rows that failed and download the
// results in every format the API writes.

import { h, fill, pct, words, announce } from "./dom.js";
import { json, request, ApiError, retryAfter, sleep } from "./api.js";
import { renderTaskChoices, chosenTasks } from "./tasks.js";

const FORMATS = [
  ["csv", "CSV"],
  ["json", "JSON"],
  ["ecsv", "ECSV"],
  ["fits", "FITS table"],
  ["votable", "VOTable"],
  ["parquet", "Parquet"],
];
const EXTENSION = { votable: "vot" };
const ROWS_SHOWN = 200;
let following = null; // the batch id the view is following; a new view stops the old loop

function problemBox(err, title) {
  const problem = err instanceof ApiError ? err.problem : { detail: String(err) };
  return h("div", { class: "notice bad", role: "alert" }, h("strong", {}, title || problem.title || "The request failed"), h("p", { class: "detail" }, problem.detail || problem.title || ""));
}

/** #/batch: the upload form. */
export function showBatchForm(view) {
  following = null;
  const list = h("div", { class: "task-list", id: "batch-task-list" });
  const input = h("input", { class: "sr-only", type: "file", id: "catalog-file", tabindex: "-1", accept: ".csv,.json,.zip,text/csv,application/json,application/zip" });
  const chosen = h("p", { class: "muted", id: "catalog-chosen", "aria-live": "polite" }, "No file chosen yet.");
  const error = h("p", { class: "form-error", role: "alert" });
  const idColumn = h("input", { id: "id-column", value: "id", autocomplete: "off", spellcheck: "false", "aria-describedby": "id-column-hint" });
  const submit = h("button", { class: "button primary", type: "submit" }, "Run the catalog");
  const drop = h("div", { class: "drop", id: "catalog-drop" },
    h("p", { class: "drop-title" }, "Drop a catalog here"),
    h("p", { class: "muted" }, "CSV (or a JSON list of rows), or a zip of images with a catalog.csv"),
    h("button", { type: "button", class: "button", onclick: () => input.click() }, "Choose a file…"),
    h("label", { class: "sr-only", for: "catalog-file" }, "Catalog file (CSV, JSON or zip)"),
    input, chosen);
  let file = null;
  const pick = (f) => { file = f || null; chosen.textContent = file ? `Chosen: ${file.name} (${(file.size / 1024).toFixed(1)} KiB)` : "No file chosen yet."; error.textContent = ""; };
  input.addEventListener("change", () => pick(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer?.files?.[0]); });

  const form = h("form", { class: "panel", novalidate: true },
    h("fieldset", { class: "tasks" }, h("legend", {}, "Questions to ask"), list),
    h("fieldset", {}, h("legend", {}, "The catalog"), drop,
      h("div", { class: "field-row", style: { marginTop: "0.8rem" } },
        h("div", { class: "field" }, h("label", { for: "id-column" }, "Column that identifies a row"), idColumn,
          h("p", { class: "hint", id: "id-column-hint" }, "Results join back to your catalog by it."))),
    ),
    error,
    h("p", {}, submit));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!file) { error.textContent = "Choose a catalog file first."; drop.querySelector("button").focus(); return; }
    const tasks = chosenTasks(list);
    if (tasks && !tasks.length) { error.textContent = "Tick at least one question to ask."; list.querySelector("input")?.focus(); return; }
    const body = new FormData();
    body.append("file", file, file.name);
    if (tasks) body.append("tasks", tasks.join(","));
    if (idColumn.value.trim()) body.append("id_column", idColumn.value.trim());
    submit.disabled = true;
    submit.textContent = "Sending…";
    try {
      const { data } = await json("v1/batches", { method: "POST", body });
      location.hash = `#/batches/${data.id}`;
    } catch (err) {
      fill(error, `${err.text || err.message}`);
      announce(err.text || err.message, true);
    } finally {
      submit.disabled = false;
      submit.textContent = "Run the catalog";
    }
  });

  fill(view,
    h("div", { class: "intro" },
      h("h1", { id: "batch-title" }, "Run a whole catalog"),
      h("p", { class: "lead" }, "One row per object. Rows say what to look at by their columns; every other column comes back with the results, so they join to your catalog.")),
    form,
    h("div", { class: "panel columns-help", style: { marginTop: "1rem", paddingBottom: "1rem" } },
      h("h2", {}, "Columns a row may use"),
      h("ul", {},
        h("li", {}, h("code", {}, "pgc"), " — a PGC number; ", h("code", {}, "name"), " — NGC/IC/Messier/UGC or a common name"),
        h("li", {}, h("code", {}, "ra"), " + ", h("code", {}, "dec"), " (degrees or sexagesimal), optional ", h("code", {}, "fov_arcmin"), "; or ", h("code", {}, "coordinates"), " holding both"),
        h("li", {}, h("code", {}, "file"), " — an image inside the zip; ", h("code", {}, "image_url"), " — an image on an allowed host")),
      h("p", { class: "muted" }, "Example: ", h("code", {}, "id,name"), " then ", h("code", {}, "a,M33"), ", ", h("code", {}, "b,NGC 4565"), ".")));
  renderTaskChoices(list, "batch-task");
}

function downloads(batchId) {
  return h("div", { class: "downloads" }, FORMATS.map(([fmt, label]) =>
    h("a", { class: "button small", href: `v1/batches/${batchId}/results?format=${fmt}`, download: `skyserve-${batchId}.${EXTENSION[fmt] || fmt}`, "data-format": fmt }, label)));
}

function rowsTable(rows, tasks) {
  const headline = (r, t) => {
    const res = r.result?.[t];
    if (!res) return "";
    if (res.kind === "regression") return `${res.value?.toFixed(1)}${res.unit === "deg" ? "°" : ""}`;
    if (res.kind === "classification") return `${words(res.value)} ${pct(res.probabilities?.[res.value])}`;
    if (res.kind === "multilabel") return pct(res.value);
    const first = Object.values(res.questions || {})[0];
    if (!first) return "";
    const [a, f] = Object.entries(first.fractions).sort((x, y) => y[1] - x[1])[0];
    return `${words(a)} ${pct(f)}`;
  };
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Rows" },
    h("table", {},
      h("thead", {}, h("tr", {}, ["row", "id", "object", "status", ...tasks].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((r) => h("tr", { class: r.status },
        h("td", { class: "num" }, String(r.row)),
        h("td", {}, r.id ?? ""),
        h("td", {}, r.resolved?.name || r.input?.name || r.input?.file || ""),
        h("td", {}, r.status),
        tasks.map((t) => h("td", {}, headline(r, t))))))));
}

function errorsTable(failed) {
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Rows that failed" },
    h("table", {},
      h("thead", {}, h("tr", {}, ["row", "id", "why it failed"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, failed.map((r) => h("tr", {},
        h("td", { class: "num" }, String(r.row)),
        h("td", {}, r.id ?? ""),
        h("td", { class: "wrap" }, r.error?.detail || r.error?.title || "unknown"))))));
}

/** #/batches/ID: progress, failures, downloads. */
export async function showBatch(view, batchId) {
  following = batchId;
  const bar = h("progress", { max: "1", value: "0", id: "batch-progress", "aria-labelledby": "batch-progress-label" });
  const label = h("p", { id: "batch-progress-label", class: "muted" }, "Reading the batch…");
  const stats = h("div", { class: "stats", "aria-live": "polite" });
  const status = h("span", { class: "pill queued" }, "…");
  const after = h("div", {});
  const downloadNote = h("p", { class: "sub" }, "Download the rows answered so far:");
  const links = downloads(batchId);
  fill(view,
    h("p", {}, h("a", { href: "#/batch" }, "← Run another catalog")),
    h("article", { class: "result", "data-batch": batchId },
      h("header", {}, h("h1", { id: "batch-title", style: { fontSize: "1.3rem", margin: 0 } }, "Catalog"), status, h("span", { class: "meta" }, "batch ", h("code", {}, batchId.slice(0, 8)))),
      h("div", { style: { padding: "1rem 1.2rem" } }, label, bar, stats, downloadNote, links, after)));
  let failures = 0;
  let announced = false;
  while (following === batchId) {
    let batch;
    let response;
    try {
      ({ data: batch, response } = await json(`v1/batches/${batchId}`));
      failures = 0;
    } catch (err) {
      failures += 1;
      if ((err.status && err.status < 500) || failures >= 6) {
        // Nothing to follow or download: no bar, no links that would only 404.
        for (const gone of [label, bar, stats, downloadNote, links]) gone.remove();
        // A missing batch stays missing; a lost connection, a busy server or a key
        // entered since may do better on a second try.
        const retryable = !err.status || err.status >= 500 || [401, 403, 429].includes(err.status);
        fill(after, problemBox(err, "Cannot read this batch"), retryable ? h("p", {}, h("button", { class: "button small", type: "button", onclick: () => showBatch(view, batchId) }, "Try again")) : null);
        status.className = "pill error"; status.textContent = "error";
        return;
      }
      fill(label, `${err.text || err.message}. Trying again…`);
      await sleep(Math.min(2 ** failures, 15));
      continue;
    }
    const p = batch.progress;
    const finished = p.done + p.failed;
    bar.max = Math.max(p.total, 1);
    bar.value = finished;
    const percent = p.total ? Math.round((finished / p.total) * 100) : 100;
    bar.setAttribute("aria-valuetext", `${percent} %`);
    status.className = `pill ${batch.status}`;
    status.textContent = batch.status;
    fill(label, `${percent} % — ${finished.toLocaleString("en")} of ${p.total.toLocaleString("en")} rows`);
    fill(stats,
      h("span", { class: "good" }, `${p.done.toLocaleString("en")} answered`),
      h("span", { class: p.failed ? "bad" : "" }, `${p.failed.toLocaleString("en")} failed`),
      h("span", {}, `${p.pending.toLocaleString("en")} pending`),
      h("span", { class: "muted" }, `tasks: ${batch.tasks.join(", ")}`));
    if (["succeeded", "failed", "cancelled"].includes(batch.status)) {
      downloadNote.textContent = "Download the results:";
      if (!announced) announce(`Catalog ${batch.status}: ${p.done} answered, ${p.failed} failed of ${p.total}.`);
      announced = true;
      await showRows(after, batchId, batch);
      return;
    }
    await sleep(Math.min(retryAfter(response, 1), 2));
  }
}

async function showRows(slot, batchId, batch) {
  if (batch.progress.total > 5000) {
    fill(slot, h("p", { class: "muted" }, "This catalog is large: download the results to see every row."));
    return;
  }
  let rows;
  try {
    const response = await request(`v1/batches/${batchId}/results?format=json`);
    rows = await response.json();
  } catch (err) {
    fill(slot, problemBox(err, "Cannot read the rows"));
    return;
  }
  const failed = rows.filter((r) => r.status === "failed");
  fill(slot,
    failed.length ? [h("h2", {}, `Rows that failed (${failed.length})`), errorsTable(failed.slice(0, ROWS_SHOWN))] : null,
    h("h2", { style: { marginTop: "1rem" } }, rows.length > ROWS_SHOWN ? `The first ${ROWS_SHOWN} rows` : "Rows"),
    rowsTable(rows.slice(0, ROWS_SHOWN), batch.tasks));
}
