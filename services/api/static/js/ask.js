// The single-image form: four ways in (a file, a PGC number or catalog id, a name, a sky
// position with a field of view) and the questions to ask. Each submission gets its own
// result card (results.js), so overlapping jobs never mix.

import { h, announce } from "./dom.js";
import { renderTaskChoices, chosenTasks } from "./tasks.js";
import { submitFile, submitTarget } from "./results.js";

let form, error, results;

function setError(message) {
  error.textContent = message || "";
}

function currentWay() {
  return form.querySelector("input[name=way]:checked").value;
}

function showWay(way) {
  for (const panel of form.querySelectorAll(".way")) panel.hidden = panel.dataset.way !== way;
  setError("");
}

/** The ticked tasks, or null (list unavailable); sets the error and returns false for none. */
function tasksOrRefuse() {
  const tasks = chosenTasks(document.getElementById("task-list"));
  if (tasks && tasks.length === 0) {
    setError("Tick at least one question to ask.");
    announce("Tick at least one question to ask.", true);
    document.querySelector("#task-list input")?.focus();
    return false;
  }
  return tasks;
}

function startFile(file) {
  setError("");
  if (!file) return;
  const tasks = tasksOrRefuse();
  if (tasks === false) return;
  document.getElementById("results-head").hidden = false;
  submitFile(results, file, tasks);
}

function targetFromForm(way) {
  if (way === "pgc") {
    const text = form.querySelector("#pgc").value.trim();
    if (!text) return { error: "Type a PGC number (e.g. 2557) or a catalog id (e.g. UGC 454).", focus: "#pgc" };
    return /^\s*(pgc|leda)?\s*\d+\s*$/i.test(text) ? { target: { pgc: text }, label: /^\d+$/.test(text) ? `PGC ${text}` : text } : { target: { name: text }, label: text };
  }
  if (way === "name") {
    const text = form.querySelector("#name").value.trim();
    if (!text) return { error: "Type the name of an object, e.g. M31 or Sombrero Galaxy.", focus: "#name" };
    return { target: { name: text }, label: text };
  }
  const ra = form.querySelector("#ra").value.trim();
  const dec = form.querySelector("#dec").value.trim();
  const fovText = form.querySelector("#fov").value.trim();
  if (!ra) return { error: "Give a right ascension (and a declination).", focus: "#ra" };
  const target = dec ? { ra: numeric(ra), dec: numeric(dec) } : { coordinates: ra };
  if (fovText) {
    const fov = Number(fovText);
    if (!Number.isFinite(fov) || fov <= 0) return { error: "The field of view is a number of arcminutes, e.g. 5.", focus: "#fov" };
    target.fov_arcmin = fov;
  }
  return { target, label: dec ? `${ra}, ${dec}` : ra };
}

function numeric(text) {
  return /^[+-]?\d+(\.\d*)?$/.test(text) ? Number(text) : text;
}

export function initAsk() {
  form = document.getElementById("ask-form");
  error = document.getElementById("form-error");
  results = document.getElementById("results");
  renderTaskChoices(document.getElementById("task-list"), "ask-task");

  for (const radio of form.querySelectorAll("input[name=way]")) {
    radio.addEventListener("change", () => showWay(radio.value));
  }
  showWay(currentWay());

  const input = document.getElementById("file");
  const drop = document.getElementById("drop");
  document.getElementById("choose").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    startFile(input.files[0]);
    input.value = ""; // choosing the same file again submits again
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = [...(e.dataTransfer?.files || [])];
    if (!files.length) return setError("Nothing was dropped: drop an image file.");
    for (const file of files) startFile(file);
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const way = currentWay();
    if (way === "file") return document.getElementById("choose").click();
    const made = targetFromForm(way);
    if (made.error) {
      setError(made.error);
      form.querySelector(made.focus)?.focus();
      return;
    }
    const tasks = tasksOrRefuse();
    if (tasks === false) return;
    setError("");
    document.getElementById("results-head").hidden = false;
    submitTarget(results, made.target, tasks, made.label);
  });

  // A "Did you mean" suggestion on a card asks about that name, as if typed.
  document.addEventListener("skyserve:look-up", (e) => {
    if (location.hash.replace(/^#\/?/, "")) location.hash = "#/";
    const radio = form.querySelector("input[name=way][value=name]");
    radio.checked = true;
    showWay("name");
    form.querySelector("#name").value = e.detail.name;
    form.requestSubmit();
  });

  document.getElementById("clear-results").addEventListener("click", () => {
    for (const card of results.querySelectorAll(".result")) card.dispatchEvent(new Event("discard"));
    results.replaceChildren();
    document.getElementById("results-head").hidden = true;
    form.querySelector("input[name=way]:checked").focus();
  });
}

