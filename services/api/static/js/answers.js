// How each kind of task's answer reads: a headline a person can read, its uncertainty,
// every ensemble member, and caveats when the tasks of one job disagree. Kinds, labels,
// ranges and unsupported classes come from the task definitions, not from this file.

import { h, pct, num, words, sentence } from "./dom.js";

const INDEFINITE = (word) => (/^[aeiou]/i.test(word) ? "an" : "a");

/** The short sentence announced to screen readers and used as the card's summary. */
export function headlineText(result, def) {
  const title = def?.title || sentence(result.task);
  if (result.kind === "regression") {
    return `${title}: ${num(result.value)}${unitText(result.unit)}`;
  }
  if (result.kind === "classification") {
    return `${title}: ${words(result.value)} (${pct(result.probabilities?.[result.value])})`;
  }
  if (result.kind === "multilabel") {
    const label = def?.labels?.[0] || "first label";
    return `${title}: ${words(label)} ${pct(result.value)}`;
  }
  if (result.kind === "vote_tree") {
    const first = Object.entries(result.questions || {})[0];
    if (first) {
      const [answer, fraction] = Object.entries(first[1].fractions).sort((a, b) => b[1] - a[1])[0];
      return `${title}: ${words(answer)} ${pct(fraction)}`;
    }
  }
  return title;
}

function unitText(unit) {
  if (!unit) return "";
  return unit === "deg" ? "°" : ` ${unit}`;
}

function membersTable(result) {
  const rows = result.members || [];
  let head; let body;
  if (result.kind === "regression") {
    const transforms = result.tta || [];
    head = ["member", "architecture", `value${unitText(result.unit)}`, ...transforms.map((t) => `${t}`)];
    body = rows.map((m) => [m.member, m.architecture, num(m.value, 2), ...(m.tta_values || []).map((v) => num(v, 2))]);
  } else if (result.kind === "vote_tree") {
    const columns = Object.keys(rows[0]?.probabilities || {});
    head = ["member", "architecture", ...columns.map((c) => c.replace(":", " → "))];
    body = rows.map((m) => [m.member, m.architecture, ...columns.map((c) => pct(m.probabilities?.[c]))]);
  } else {
    const labels = Object.keys(result.probabilities || rows[0]?.probabilities || {});
    head = ["member", "architecture", ...labels.map(words)];
    body = rows.map((m) => [m.member, m.architecture, ...labels.map((l) => pct(m.probabilities?.[l]))]);
  }
  return h("details", { class: "members" },
    h("summary", {}, `Every ensemble member's answer (${rows.length})`),
    h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `${result.task}: every ensemble member` },
      h("table", {},
        h("thead", {}, h("tr", {}, head.map((c, i) => h("th", { scope: "col", class: i > 1 ? "num" : null }, c)))),
        h("tbody", {}, body.map((r) => h("tr", {}, r.map((c, i) => h(i === 0 ? "th" : "td", { scope: i === 0 ? "row" : null, class: i > 1 ? "num" : null }, c))))))));
}

function bar(label, p, spread, { cls = "", note = null } = {}) {
  const width = Math.max(0, Math.min(1, p || 0)) * 100;
  return h("li", {},
    h("span", { class: "label" }, sentence(label), note ? h("small", {}, note) : null),
    h("span", { class: "meter", role: "img", "aria-label": `${words(label)} ${pct(p)}` },
      h("span", { class: `fill ${cls}`, style: { width: `${width}%` } })),
    h("span", { class: "value" }, pct(p), spread !== undefined && spread !== null ? h("small", {}, ` ±${(spread * 100).toFixed(spread < 0.1 ? 1 : 0)}`) : null));
}

function regression(result, def, card) {
  const [lo, hi] = def?.range || [null, null];
  // This answer's own 1σ error (calibrated on held-out data) when the version has an
  // error model; else the model's typical held-out error.
  const own = result.summary?.error;
  const error = own !== undefined && own !== null ? { value: own, own: true } : card?.held_out_error;
  const stdev = result.summary?.stdev;
  const value = result.value;
  const u = unitText(result.unit);
  const nodes = [];
  const coverage = card?.metrics?.error_coverage_1sigma;
  nodes.push(h("p", { class: "headline" }, num(value), h("span", { class: "unit" }, u),
    error ? h("span", { class: "pm" }, ` ± ${num(error.value)}${u}`) : null));
  nodes.push(h("p", { class: "sub" }, error?.own
    ? `± ${num(error.value)}${u} is this answer's 1σ error, calibrated on held-out images${coverage !== undefined ? ` (${pct(coverage)} of held-out truths fell within their ±1σ)` : ""}.`
    : error
    ? `± ${num(error.value)}${u} is the model's typical error: its ${error.metric.replace(/_deg$/, "").toUpperCase()} on ${card?.metrics?.n_test ? card.metrics.n_test.toLocaleString("en") + " " : ""}held-out images.`
    : "The model card lists no held-out error for this value."));
  if (lo !== null && hi !== null) {
    const span = hi - lo;
    const at = (v) => `${Math.max(0, Math.min(100, ((v - lo) / span) * 100))}%`;
    const band = error ? h("span", { class: "band", style: { left: at(value - error.value), width: `calc(${at(value + error.value)} - ${at(value - error.value)})` } }) : null;
    nodes.push(h("div", { class: "range", role: "img", "aria-label": `${num(value)}${u} on the served range ${lo}${u} to ${hi}${u}` },
      h("span", { class: "track" }), band, h("span", { class: "mark", style: { left: at(value) } }),
      h("span", { class: "tick start", style: { left: "0%" } }, `${lo}${u}`),
      h("span", { class: "tick", style: { left: "50%" } }, `${(lo + hi) / 2}${u}`),
      h("span", { class: "tick end", style: { left: "100%" } }, `${hi}${u}`)));
    const tolerance = Math.max(0.5, (error?.value || 0) / 4);
    if (value <= lo + tolerance || value >= hi - tolerance) {
      const edge = value <= lo + tolerance ? lo : hi;
      const below = edge === lo;
      nodes.push(h("div", { class: "notice warn" },
        h("strong", {}, `At the limit: ${edge}${u}`),
        h("p", {}, below
          ? `${lo}${u} is the lowest answer this model gives (its served range is ${lo}–${hi}${u}). The object may be closer to face-on than that; the value is the model's floor, not a measurement.`
          : `${hi}${u} is the highest answer this model gives: the object is edge-on or the model saturated.`)));
    }
  }
  const members = result.members?.length || 0;
  const transforms = result.tta?.length || 1;
  nodes.push(h("p", { class: "sub" },
    `Median of ${members} member${members === 1 ? "" : "s"}${transforms > 1 ? ` × ${transforms} rotations` : ""}; they agree to ±${num(stdev, 2)}${u} (their spread, not the error).`));
  return nodes;
}

function multilabel(result, def) {
  const labels = def?.labels || Object.keys(result.probabilities || {});
  const [head, ...reasons] = labels;
  const p = result.probabilities?.[head] ?? result.value;
  const yes = p >= 0.5;
  const nodes = [];
  if (head === "reject") {
    nodes.push(h("p", { class: `verdict ${yes ? "bad" : "good"}` },
      yes ? "A person would likely reject this image" : "A person would likely keep this image"));
    const spread = result.spread?.[head];
    nodes.push(h("p", { class: "sub" }, `Probability of rejection: ${pct(p)}${spread >= 0.001 ? ` (members differ by ±${pct(spread)})` : ""}.`));
  } else {
    nodes.push(h("p", { class: "verdict" }, `${sentence(head)}: ${pct(p)}`));
  }
  const likely = reasons.filter((r) => (result.probabilities?.[r] || 0) >= 0.5);
  if (head === "reject") {
    nodes.push(h("p", { class: "sub" }, likely.length
      ? `Reasons: ${likely.map(words).join(", ")}.`
      : yes ? "No single reason stands out." : "No reason to reject stands out."));
  }
  nodes.push(h("ul", { class: "bars", "aria-label": "Probability of each reason" },
    reasons.map((r) => bar(r, result.probabilities?.[r], result.spread?.[r], { cls: (result.probabilities?.[r] || 0) >= 0.5 ? "hot" : "" }))));
  return nodes;
}

function classification(result, def) {
  const unsupported = new Set(def?.unsupported_classes || []);
  const entries = Object.entries(result.probabilities || {}).sort((a, b) => b[1] - a[1]);
  const [top, p] = entries[0] || [result.value, null];
  const nodes = [h("p", { class: "headline" }, sentence(top), h("span", { class: "pm" }, ` ${pct(p)}`))];
  const second = entries[1];
  nodes.push(h("p", { class: "sub" }, second
    ? `Next most likely: ${words(second[0])} (${pct(second[1])}).`
    : ""));
  if (unsupported.has(top)) {
    nodes.push(h("div", { class: "notice warn" }, h("strong", {}, `${sentence(top)} is an unsupported class`),
      h("p", {}, "The model saw too few examples of it to be trusted on it; see the model card's limitations.")));
  }
  nodes.push(h("ul", { class: "bars", "aria-label": "Probability of each class" },
    entries.map(([label, prob], i) => bar(label, prob, result.spread?.[label], {
      cls: i === 0 ? "top" : "",
      note: unsupported.has(label) ? "unsupported: too few training examples" : null,
    }))));
  return nodes;
}

function depthOf(question, byName) {
  let depth = 0;
  let current = question;
  while (current?.depends_on && depth < 5) {
    current = byName[current.depends_on.split(":")[0]];
    depth += 1;
  }
  return depth;
}

function voteTree(result, def) {
  const questions = def?.vote_tree?.questions ||
    Object.keys(result.questions || {}).map((name) => ({ name, text: words(name), answers: Object.keys(result.questions[name].fractions) }));
  const byName = Object.fromEntries(questions.map((q) => [q.name, q]));
  const nodes = [h("p", { class: "sub" },
    "Expected share of volunteers giving each answer. Deeper questions are asked only after certain answers; “reached” is how likely a volunteer gets that far.")];
  for (const q of questions) {
    const r = result.questions?.[q.name];
    if (!r) continue;
    const top = Object.entries(r.fractions).sort((a, b) => b[1] - a[1])[0]?.[0];
    const reached = r.reached;
    const depth = Math.min(depthOf(q, byName), 3);
    // "after “no”" alone does not say to what: name the question the answer belongs to.
    const [parent, answer] = (q.depends_on || "").split(":");
    const after = q.depends_on ? `after “${words(parent)}: ${words(answer)}”` : "asked first";
    nodes.push(h("div", { class: `question depth-${depth}${reached < 0.5 ? " unreached" : ""}` },
      h("p", { class: "q" }, q.text || words(q.name), " ",
        h("span", { class: "reach" }, `${after} · reached ${pct(reached)}${reached < 0.5 ? " (rarely reached)" : ""}`)),
      h("ul", { class: "bars", "aria-label": q.text || words(q.name) },
        q.answers.map((a) => bar(a, r.fractions[a], r.spread?.[a], { cls: a === top ? "top" : "" })))));
  }
  return nodes;
}

/** One task's section of a result card. */
export function renderTask(result, def, card) {
  let body;
  if (result.kind === "regression") body = regression(result, def, card);
  else if (result.kind === "multilabel") body = multilabel(result, def);
  else if (result.kind === "classification") body = classification(result, def);
  else if (result.kind === "vote_tree") body = voteTree(result, def);
  else body = [h("pre", { class: "cmd" }, JSON.stringify(result.value))];
  const flag = result.applicable === false
    ? h("div", { class: "notice bad", role: "note" }, h("strong", {}, "This answer does not apply to this image"),
      h("p", {}, result.reason || result.applicable_reason || "The model says its answer is not meaningful here."))
    : null;
  return h("section", { class: "task", "data-task": result.task, "aria-label": def?.title || result.task },
    h("div", { class: "task-head" },
      h("h3", {}, def?.title || sentence(result.task)),
      h("a", { href: `#/models/${encodeURIComponent(result.task)}/${result.model_version}` }, `model v${result.model_version}`)),
    flag, body, membersTable(result));
}

/**
 * Caveats when the tasks of one job disagree: something other than a galaxy, a face-on
 * or rejected image next to an inclination, an answer flagged as not applicable.
 */
export function caveats(job, defs) {
  const tasks = job.result?.tasks || {};
  const out = [];
  const regression = Object.values(tasks).filter((t) => t.kind === "regression");
  const incl = tasks.inclination || regression[0];
  const objectType = tasks["object-type"];
  const rejection = tasks.rejection;
  const name = (t) => defs[t.task]?.title || words(t.task);
  for (const t of Object.values(tasks)) {
    if (t.applicable === false) {
      // The reason itself is shown once, in the task's own section.
      out.push({ level: "bad", title: `${name(t)}: not applicable here`, text: "Its section below says why; do not use its value for this image." });
    }
  }
  // The catalogue's own type of a looked-up object (OpenNGC: G galaxy, GGroup, GPair…).
  const resolved = job.input?.resolved;
  if (incl && resolved?.type && !/^G(Pair|Trpl|Group)?$/.test(resolved.type)) {
    out.push({
      level: "warn",
      title: `${resolved.name} is catalogued as ${resolved.type_name || resolved.type}, not a galaxy`,
      text: `An inclination only means something for a disk galaxy, so treat the ${num(incl.value)}${unitText(incl.unit)} below with suspicion.`,
    });
  }
  if (incl) {
    if (objectType && objectType.value && objectType.value !== "galaxy") {
      const p = objectType.probabilities?.[objectType.value];
      const galaxy = objectType.probabilities?.galaxy;
      const unsupported = (defs[objectType.task]?.unsupported_classes || []).includes(objectType.value);
      out.push(unsupported
        ? {
          level: "warn",
          title: `Object type is unsure this is a galaxy`,
          text: `Its top answer, ${words(objectType.value)} (${pct(p)}), is a class it cannot be trusted on; it gives a galaxy ${pct(galaxy)}. Look at the image before using the ${num(incl.value)}${unitText(incl.unit)} inclination.`,
        }
        : {
          level: "warn",
          title: `This looks like ${INDEFINITE(words(objectType.value))} ${words(objectType.value)}, not a galaxy`,
          text: `Object type puts ${words(objectType.value)} at ${pct(p)}${galaxy !== undefined ? ` and a galaxy at ${pct(galaxy)}` : ""}. An inclination only means something for a disk galaxy, so treat the ${num(incl.value)}${unitText(incl.unit)} below with suspicion.`,
        });
    }
    if (rejection?.probabilities) {
      const faceOn = rejection.probabilities.face_on;
      if (faceOn !== undefined && faceOn >= 0.5) {
        const lo = defs[incl.task]?.range?.[0];
        out.push({
          level: "warn",
          title: "The galaxy may be face-on",
          text: `Rejection gives “closer than 45° to face-on” ${pct(faceOn)}.${lo !== undefined ? ` The inclination model never answers below ${lo}°, so its value is a floor, not a measurement.` : ""}`,
        });
      } else if ((rejection.probabilities.reject || 0) >= 0.5) {
        const reasons = (defs.rejection?.labels || Object.keys(rejection.probabilities)).slice(1)
          .filter((r) => (rejection.probabilities[r] || 0) >= 0.5).map(words);
        out.push({
          level: "warn",
          title: "A person would likely reject this image",
          text: `Probability of rejection ${pct(rejection.probabilities.reject)}${reasons.length ? ` (${reasons.join(", ")})` : ""}; check the image before using the inclination.`,
        });
      }
    }
  }
  return out;
}
