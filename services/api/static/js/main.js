// The page's entry point: a hash router (#/, #/jobs/ID, #/batch, #/batches/ID, #/models,
// #/models/TASK/VERSION) so every view has an address that survives a reload and works
// under any sub-path.

import { setApiKey, apiKey } from "./api.js";
import { initAsk } from "./ask.js";
import { showJob } from "./results.js";
import { showBatchForm, showBatch } from "./batch.js";
import { showModels, showModelCard } from "./models.js";

const views = ["ask", "job", "batch", "models", "missing"];

function show(view, nav) {
  for (const name of views) {
    const el = document.getElementById(`view-${name}`);
    if (el) el.hidden = name !== view;
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

let previous = null;

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  let title = "skyserve — ask about a sky image";
  if (parts.length === 0) {
    show("ask", "ask");
  } else if (parts[0] === "jobs" && parts[1]) {
    show("job", "ask");
    showJob(document.getElementById("job-slot"), parts[1]);
    title = "skyserve — a result";
  } else if (parts[0] === "batch" && !parts[1]) {
    show("batch", "batch");
    showBatchForm(document.getElementById("view-batch"));
    title = "skyserve — a catalog";
  } else if (parts[0] === "batches" && parts[1]) {
    show("batch", "batch");
    showBatch(document.getElementById("view-batch"), parts[1]);
    title = "skyserve — a catalog's progress";
  } else if (parts[0] === "models" && parts[1] && parts[2]) {
    show("models", "models");
    showModelCard(document.getElementById("view-models"), parts[1], parts[2]);
    title = `skyserve — model card: ${parts[1]} v${parts[2]}`;
  } else if (parts[0] === "models") {
    show("models", "models");
    showModels(document.getElementById("view-models"));
    title = "skyserve — models";
  } else {
    show("missing", null);
    title = "skyserve — not found";
  }
  document.title = title;
  // Move focus to the new view for keyboard and screen-reader users (not on first load).
  if (previous !== null && previous !== hash) document.getElementById("main").focus({ preventScroll: false });
  previous = hash;
}

function initApiKey() {
  const input = document.getElementById("api-key");
  input.value = apiKey();
  document.getElementById("save-key").addEventListener("click", () => {
    setApiKey(input.value.trim());
    input.value = apiKey();
  });
}

initAsk();
initApiKey();
window.addEventListener("hashchange", route);
route();
