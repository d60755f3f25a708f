// Result cards. Each card is bound to one job id: it submits, follows and renders only
// that job, so two overlapping uploads can never show each other's answers. Every
// failure (network, refusal, failed job) ends in words on the card, never a spinner.

import { h, fill, num, hms, dms, announce } from "./dom.js";
import { json, ApiError, retryAfter, sleep } from "./api.js";
import { taskDefinition, modelCard } from "./catalogue.js";
import { renderTask, caveats, headlineText } from "./answers.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const STATUS_TEXT = {
  sending: "Sending…",
  queued: "Queued: waiting for a worker…",
  running: "Running the models…",
};
const BROWSER_IMAGES = /^image\/(png|jpeg|gif|webp|bmp|avif)$/;
let counter = 0;

/** Where a cutout problem is fixed, in the server's settings, and the way around it. */
function cutoutHint(problem) {
  const code = problem?.code;
  if (code !== "cutout-unavailable" && code !== "host-not-allowed") return null;
  const detail = String(problem.detail || "").toLowerCase();
  let setting = "raise SKYSERVE_CUTOUT_TIMEOUT_SECONDS or SKYSERVE_CUTOUT_RETRIES, or point SKYSERVE_CUTOUT_PROVIDER / SKYSERVE_CUTOUT_URL_TEMPLATE at a survey it can reach";
  if (code === "host-not-allowed") setting = "add the host to SKYSERVE_CUTOUT_ALLOWED_HOSTS";
  else if (detail.includes("local archive")) setting = "put the image in SKYSERVE_CUTOUT_ARCHIVE_DIR";
  else if (detail.includes("no cutout service") || detail.includes("configured")) setting = "set SKYSERVE_CUTOUT_PROVIDER (sdss, legacy, http or local)";
  // Waiting longer does not help a server that cannot reach the survey at all.
  else if (detail.includes("connection failed") || detail.includes("cannot resolve")) setting = "let it reach the survey (is it offline?), point SKYSERVE_CUTOUT_PROVIDER / SKYSERVE_CUTOUT_URL_TEMPLATE at one it can reach, or serve cutouts from a folder (SKYSERVE_CUTOUT_PROVIDER=local)";
  return `The server could not get an image of this object. Whoever runs it can ${setting}. Meanwhile, upload an image of it instead.`;
}

/** What a person on this page does about a missing or weak key. */
function keyHint(status) {
  if (status !== 401 && status !== 403) return null;
  const box = document.querySelector("details.apikey");
  if (box) box.open = true;
  return status === 401
    ? "On this page: enter your key under “API key” at the bottom, then try again."
    : "On this page: enter a key with that scope under “API key” at the bottom, then try again.";
}

/** Ask about a suggested name, as if it had been typed into the Name box. */
function lookUp(name) {
  document.dispatchEvent(new CustomEvent("skyserve:look-up", { detail: { name } }));
}

class ResultCard {
  constructor(container, title, { prepend = true } = {}) {
    this.id = `result-${++counter}`;
    this.jobId = null;
    this.title = title;
    this.stopped = false;
    this.status = h("span", { class: "pill queued" }, "sending");
    this.meta = h("span", { class: "meta" });
    this.figure = h("figure", { class: "seen" }, h("div", { class: "placeholder" }, "The image appears here"));
    this.answers = h("div", { class: "answers" }, this.pendingLine("sending"));
    this.footer = h("footer", { hidden: true });
    this.el = h("article", { class: "result", id: this.id, "aria-labelledby": `${this.id}-title`, "aria-busy": "true" },
      h("header", {}, h("h3", { id: `${this.id}-title` }, title), this.status, this.meta),
      h("div", { class: "result-body" }, this.figure, this.answers),
      this.footer);
    this.el.addEventListener("discard", () => { this.stopped = true; });
    if (prepend) container.prepend(this.el); else container.append(this.el);
  }

  pendingLine(state, extra) {
    return h("p", { class: "pending", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), extra || STATUS_TEXT[state] || `${state}…`);
  }

  setStatus(state) {
    this.status.className = `pill ${state === "sending" ? "queued" : state}`;
    this.status.textContent = state;
    if (state === "error") this.el.setAttribute("aria-busy", "false");
  }

  /** The card shows its final answer (or problem): no longer busy. */
  settled() {
    this.el.setAttribute("aria-busy", "false");
  }

  setPreview(url, caption) {
    fill(this.figure, h("img", { src: url, alt: `Your upload: ${this.title}` }), h("figcaption", {}, caption));
  }

  bind(jobId) {
    this.jobId = jobId;
    this.el.dataset.job = jobId;
    fill(this.meta, "job ", h("code", {}, jobId.slice(0, 8)));
  }

  /** Show a problem in words, with an optional retry (and `before`, e.g. the object looked up). */
  fail(err, { retry = null, title = null, before = null } = {}) {
    this.setStatus("error");
    const problem = err instanceof ApiError ? err.problem : { title: "Something went wrong", detail: String(err) };
    const status = err instanceof ApiError ? err.status : 0;
    const hint = cutoutHint(problem) || keyHint(status);
    // A refusal (a typo, a bad file) comes back the same however often it is sent; a
    // lost connection, a busy server or a key entered since may go through.
    const retryable = retry && (!status || status >= 500 || [401, 403, 408, 429].includes(status));
    const suggestions = Array.isArray(problem.suggestions) && problem.suggestions.length
      ? h("p", { class: "suggestions" }, "Look up instead: ", problem.suggestions.map((name) =>
        h("button", { type: "button", class: "button small", onclick: () => lookUp(name) }, name)))
      : null;
    const placeholder = this.figure.querySelector(".placeholder");
    if (placeholder && placeholder.textContent === "The image appears here") placeholder.textContent = "No image";
    fill(this.answers, before, h("div", { class: "notice bad", role: "alert" },
      h("strong", {}, title || problem.title || "The request failed"),
      h("p", { class: "detail" }, problem.detail || problem.title || "No reason was given."),
      suggestions,
      hint ? h("p", {}, hint) : null,
      retryable ? h("p", {}, h("button", { type: "button", class: "button small", onclick: retry }, "Try again")) : null));
    announce(`${this.title}: ${problem.detail || problem.title || "failed"}`, true);
  }

  /** Submit with `send` (which resolves to the job record), then follow the job. */
  async run(send) {
    this.setStatus("sending");
    fill(this.answers, this.pendingLine("sending"));
    let job;
    try {
      ({ data: job } = await send());
    } catch (err) {
      return this.fail(err, { retry: () => this.run(send), title: err.status === 0 ? "Cannot reach skyserve" : null });
    }
    this.bind(job.id);
    await this.follow(job);
  }

  /** Poll the job (long-polling with ?wait=) until it ends; retry lost connections. */
  async follow(job) {
    let failures = 0;
    let current = job;
    while (!this.stopped) {
      if (current) {
        this.setStatus(current.status);
        if (TERMINAL.has(current.status)) return this.render(current);
        fill(this.answers, this.pendingLine(current.status));
      }
      try {
        const { data, response } = await json(`v1/jobs/${this.jobId}?wait=10`);
        current = data;
        failures = 0;
        if (!TERMINAL.has(data.status)) await sleep(Math.min(retryAfter(response, 0.2), 2));
      } catch (err) {
        failures += 1;
        if (err.status && err.status < 500 && err.status !== 429) return this.fail(err, { retry: () => this.follow(null) });
        if (failures >= 6) return this.fail(err, { retry: () => this.follow(null), title: "Lost touch with the job" });
        const wait = Math.min(2 ** failures, 15);
        fill(this.answers, this.pendingLine("retry", `${err.text || err.message}. Trying again in ${wait} s…`));
        await sleep(wait);
        current = null;
      }
    }
  }

  async render(job) {
    this.setStatus(job.status);
    if (job.status === "cancelled") {
      fill(this.answers, h("div", { class: "notice warn", role: "status" }, h("strong", {}, "Cancelled"), h("p", {}, "This job was cancelled before it finished.")));
      this.settled();
      return;
    }
    if (job.status === "failed") {
      this.showSeen(job, false);
      // The object was found even when its image could not be fetched: say which.
      const before = job.input.kind === "target" ? this.objectFacts(job.input) : null;
      this.fail(new ApiError(job.error || { title: "The job failed" }, job.error?.status || 422), { title: `Failed: ${job.error?.title || "the job could not be answered"}`, before });
      this.setStatus("failed");
      this.renderFooter(job);
      return;
    }
    const names = job.tasks.filter((t) => job.result.tasks[t]);
    const defs = {};
    const cards = {};
    await Promise.all(names.map(async (t) => {
      defs[t] = await taskDefinition(t);
      cards[t] = await modelCard(t, job.result.tasks[t].model_version);
    }));
    if (this.stopped) return;
    this.showSeen(job, true);
    const notes = caveats(job, defs).map((c) => h("div", { class: `notice ${c.level}`, role: "note" }, h("strong", {}, c.title), h("p", {}, c.text)));
    fill(this.answers,
      job.input.kind === "target" ? this.objectFacts(job.input) : null,
      notes.length ? h("div", { class: "caveats" }, notes) : null,
      names.map((t) => renderTask(job.result.tasks[t], defs[t], cards[t])));
    this.renderFooter(job);
    this.settled();
    const summary = names.map((t) => headlineText(job.result.tasks[t], defs[t])).join("; ");
    announce(`Answer for ${this.title}: ${summary}.${notes.length ? ` ${notes.length} caveat${notes.length > 1 ? "s" : ""}.` : ""}`);
  }

  showSeen(job, succeeded) {
    const turned = job.input.pa_deg !== null && job.input.pa_deg !== undefined;
    const what = job.input.kind !== "target"
      ? "your image, decoded and padded to a square"
      : turned
        ? "the survey cutout, turned so the major axis is horizontal and cropped to the field of view"
        : "the survey cutout, cropped to the field of view (not turned: no catalogued position angle)";
    if (!succeeded && job.input.kind === "target") return; // nothing was fetched
    const img = h("img", { src: `v1/jobs/${job.id}/image`, alt: `The image as the model saw it: ${what}.` });
    img.addEventListener("error", () => {
      fill(this.figure, h("div", { class: "placeholder" }, "The evaluated image is not available."));
    }, { once: true });
    fill(this.figure, img, h("figcaption", {}, `As the model saw it: ${what}.`));
  }

  objectFacts(input) {
    const r = input.resolved;
    const facts = [];
    const add = (term, value) => { if (value !== null && value !== undefined && value !== "") facts.push(h("dt", {}, term), h("dd", {}, value)); };
    if (r) {
      add("Identifiers", (r.identifiers || []).slice(0, 8).join(" · "));
      add("Type", [r.type_name, r.hubble].filter(Boolean).join(", "));
      add("Position", r.ra_deg !== null && r.ra_deg !== undefined ? `${hms(r.ra_deg)} ${dms(r.dec_deg)} (${num(r.ra_deg, 4)}°, ${num(r.dec_deg, 4)}°)` : null);
      add("Size", r.majax_arcmin ? `${num(r.majax_arcmin, 2)}′ × ${num(r.minax_arcmin, 2)}′` : null);
      add("Position angle", r.pa_deg !== null && r.pa_deg !== undefined ? `${num(r.pa_deg, 0)}°` : null);
      if (r.pgc) add("PGC", String(r.pgc));
    } else {
      add("Position", `${hms(input.ra_deg)} ${dms(input.dec_deg)} (${num(input.ra_deg, 4)}°, ${num(input.dec_deg, 4)}°)`);
    }
    add("Field of view", `${num(input.fov_arcmin, 2)}′${input.pa_deg !== null && input.pa_deg !== undefined ? `, turned by ${num(input.pa_deg, 0)}°` : ", not turned"}`);
    return h("div", { class: "object" },
      h("h3", {}, r ? `${r.name}${r.identifiers?.length ? ` (${r.identifiers[0]})` : ""}` : "No catalogued object within 1′"),
      h("dl", { class: "facts" }, facts));
  }

  renderFooter(job) {
    const share = new URL(`#/jobs/${job.id}`, location.href).href;
    const copy = h("button", { type: "button", class: "button small", "aria-label": "Copy the link to this result" }, "Copy link");
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(share);
        copy.textContent = "Copied";
      } catch {
        copy.textContent = "Select the link to copy it";
      }
    });
    const versions = Object.entries(job.result?.models || {}).map(([t, v]) =>
      h("a", { href: `#/models/${encodeURIComponent(t)}/${v}` }, `${t} v${v}`));
    const total = job.result?.timings_ms?.total;
    fill(this.footer,
      versions.length ? h("span", {}, "Answered by ", versions.flatMap((a, i) => (i ? [", ", a] : [a]))) : null,
      total ? h("span", {}, `${(total / 1000).toFixed(2)} s on the worker`) : null,
      h("a", { href: `v1/jobs/${job.id}`, type: "application/json" }, "JSON"),
      h("span", { class: "share" }, h("a", { href: share, class: "share-link" }, "Link to this result"), copy));
    this.footer.hidden = false;
  }
}

/** Upload one image and follow its job in a new card. */
export function submitFile(container, file, tasks) {
  const card = new ResultCard(container, file.name || "image");
  if (BROWSER_IMAGES.test(file.type)) {
    const url = URL.createObjectURL(file);
    card.setPreview(url, "Your upload; the image as the model saw it replaces it.");
  } else {
    fill(card.figure, h("div", { class: "placeholder" }, /\.(fits?|fts)$/i.test(file.name) ? "FITS image: shown once decoded by the server" : "Preview not available"));
  }
  const form = new FormData();
  form.append("file", file, file.name || "image");
  if (tasks) form.append("tasks", tasks.join(","));
  card.run(() => json("v1/jobs", { method: "POST", body: form }));
  return card;
}

/** Ask about a catalogued object or position and follow its job in a new card. */
export function submitTarget(container, target, tasks, label) {
  const card = new ResultCard(container, label);
  const body = { target };
  if (tasks) body.tasks = tasks;
  card.run(() => json("v1/jobs", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } }));
  return card;
}

/** A shared result (#/jobs/ID): the card of an existing job. */
export function showJob(slot, jobId) {
  for (const old of slot.querySelectorAll(".result")) old.dispatchEvent(new Event("discard"));
  slot.replaceChildren();
  const card = new ResultCard(slot, `Job ${jobId.slice(0, 8)}`);
  card.bind(jobId);
  card.follow(null);
  // Name the card after its input once the record arrives.
  json(`v1/jobs/${jobId}`).then(({ data }) => {
    const label = data.input.kind === "image" ? data.input.filename || "uploaded image" : data.input.resolved?.name || `${num(data.input.ra_deg, 4)}, ${num(data.input.dec_deg, 4)}`;
    card.title = label;
    card.el.querySelector("h3").textContent = label;
  }).catch(() => {});
  return card;
}
