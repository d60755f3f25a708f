// What the server can answer: task definitions (GET v1/tasks) and model cards
// (GET v1/models/{task}/{version}), fetched once and shared by every view.

import { json } from "./api.js";

let tasks = null;
const cards = new Map();

/** The task definitions with their served versions; rejects with ApiError. */
export function loadTasks(force = false) {
  if (!tasks || force) {
    tasks = json("v1/tasks").then(({ data }) => data);
    tasks.catch(() => { tasks = null; }); // a later call tries again
  }
  return tasks;
}

/** Tasks a model serves now. */
export async function servedTasks() {
  return (await loadTasks()).filter((t) => t.latest !== null && t.latest !== undefined);
}

/** One task's definition, or undefined (e.g. when v1/tasks failed). */
export async function taskDefinition(name) {
  try {
    return (await loadTasks()).find((t) => t.name === name);
  } catch {
    return undefined;
  }
}

/** A model card; null when it cannot be read (the answer is still shown without it). */
export function modelCard(task, version) {
  const key = `${task}/${version}`;
  if (!cards.has(key)) {
    const pending = json(`v1/models/${encodeURIComponent(task)}/${encodeURIComponent(version)}`)
      .then(({ data }) => data)
      .catch(() => { cards.delete(key); return null; });
    cards.set(key, pending);
  }
  return cards.get(key);
}
