// Small DOM helpers: elements are built with h(), never from HTML strings, so nothing a
// server or a file name says can become markup.

/**
 * Create an element. `attrs`: class, text, dataset-like `data-*`, aria-*, on<Event>
 * handlers, and any other attribute; children: nodes, strings, arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A percentage for people: 93 %, 0.4 %, < 0.1 %. */
export function pct(p) {
  if (p === null || p === undefined || Number.isNaN(p)) return "–";
  const v = p * 100;
  if (v > 0 && v < 0.1) return "< 0.1 %";
  if (v > 99.9 && v < 100) return "> 99.9 %";
  return `${v < 10 ? v.toFixed(1) : v.toFixed(0)} %`;
}

/** A number with a sensible number of digits. */
export function num(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toFixed(digits);
}

/** Label text from a machine name: emission_nebula → emission nebula. */
export function words(name) {
  return String(name).replace(/[_-]+/g, " ").replace(/\bsnr\b/gi, "S/N");
}

/** "Emission nebula". */
export function sentence(name) {
  const w = words(name);
  return w.charAt(0).toUpperCase() + w.slice(1);
}

/** RA in degrees → 00h42m44.3s. */
export function hms(deg) {
  // Round first, so 59.96 s shows as the next minute, never as "60.0s".
  let s = Math.round(((deg % 360) + 360) % 360 / 15 * 36000) / 10 % 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const mm = Math.floor(s / 60); s -= mm * 60;
  return `${String(hh).padStart(2, "0")}h${String(mm).padStart(2, "0")}m${s.toFixed(1).padStart(4, "0")}s`;
}

/** Dec in degrees → +41°16′09″. */
export function dms(deg) {
  const sign = deg < 0 ? "−" : "+";
  let s = Math.round(Math.abs(deg) * 3600);  // whole arcseconds: never "60″"
  const dd = Math.floor(s / 3600); s -= dd * 3600;
  const mm = Math.floor(s / 60); s -= mm * 60;
  return `${sign}${String(dd).padStart(2, "0")}°${String(mm).padStart(2, "0")}′${s.toFixed(0).padStart(2, "0")}″`;
}

/** Say something to screen readers (polite) or, with `urgent`, interrupt them. */
export function announce(message, urgent = false) {
  const region = document.getElementById(urgent ? "alerter" : "announcer");
  if (!region) return;
  region.textContent = "";
  // A fresh text node after a tick is announced even when the text repeats.
  setTimeout(() => { region.textContent = message; }, 50);
}
