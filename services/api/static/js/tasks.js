// The "questions to ask" checkboxes, shared by the single-image form and the catalog form.

import { h, fill } from "./dom.js";
import { servedTasks } from "./catalogue.js";

const SHORT = {
  regression: "a number with its error",
  multilabel: "a verdict and its reasons",
  classification: "class probabilities",
  vote_tree: "vote fractions along a decision tree",
};

/**
 * Fill `list` with one checkbox per served task (all ticked). On failure it says why and
 * offers a retry; submissions then go without a task list (the server asks every task).
 */
export async function renderTaskChoices(list, idPrefix) {
  fill(list, h("p", { class: "muted", role: "status" }, "Loading the questions…"));
  try {
    const tasks = await servedTasks();
    if (!tasks.length) {
      fill(list, h("p", { class: "notice warn", role: "status" }, "No model is published on this server yet, so nothing can be answered."));
      return;
    }
    fill(list, tasks.map((t) => h("label", { class: "check" },
      h("input", { type: "checkbox", name: "task", value: t.name, checked: true, id: `${idPrefix}-${t.name}` }),
      h("span", {}, t.title, h("small", {}, SHORT[t.kind] || t.kind)),
    )));
  } catch (err) {
    const retry = h("button", { type: "button", class: "button small", onclick: () => renderTaskChoices(list, idPrefix) }, "Try again");
    fill(list, h("div", { class: "notice bad", role: "alert" },
      h("strong", {}, "Could not load the list of questions."),
      h("p", {}, err.text || String(err)),
      h("p", {}, "You can still submit: the server then answers every question it serves. ", retry)));
  }
}

/**
 * The ticked task names; `null` when the list could not be loaded (ask everything).
 * An empty array means the user unticked everything.
 */
export function chosenTasks(list) {
  const boxes = [...list.querySelectorAll("input[name=task]")];
  if (!boxes.length) return null;
  return boxes.filter((b) => b.checked).map((b) => b.value);
}
