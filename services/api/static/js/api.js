// Every call to the skyserve API goes through here. URLs are relative to the page, so
// the page works under any sub-path a proxy serves it from. Errors become ApiError with
// the server's problem document (RFC 9457), or a problem of our own when the network
// failed, so the page can always show a `detail` in words.

const KEY_STORE = "skyserve-api-key";

export class ApiError extends Error {
  constructor(problem, status) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.problem = problem;
    this.status = status;
  }
  /** "Title: detail", the sentence a person reads. */
  get text() {
    const { title, detail } = this.problem;
    return title && detail ? `${title}: ${detail}` : detail || title || this.message;
  }
}

export function apiKey() {
  try { return sessionStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
}

export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
  } catch { /* private mode: the key lasts as long as the page */ }
}

async function problemOf(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && typeof body === "object" && (body.title || body.detail)) return { status: response.status, ...body };
  } catch { /* not JSON: a proxy's HTML page or plain text */ }
  return {
    title: response.statusText || `HTTP ${response.status}`,
    status: response.status,
    detail: text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 300) ||
      `The server answered ${response.status} without saying why.`,
  };
}

/** fetch() a path relative to the page; resolves to the Response, rejects with ApiError. */
export async function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  const auth = apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {};
  let response;
  try {
    response = await fetch(path, { method, body, headers: { ...auth, ...headers }, signal });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError({
      title: "Cannot reach skyserve",
      detail: "The request did not reach the server (the network or the server is down). " +
        "Check the connection and try again.",
      code: "network",
    }, 0);
  }
  if (!response.ok) throw new ApiError(await problemOf(response), response.status);
  return response;
}

/** GET/POST and parse JSON. */
export async function json(path, options) {
  const response = await request(path, options);
  try {
    return { data: await response.json(), response };
  } catch {
    throw new ApiError({ title: "Unreadable answer", detail: "The server's answer was not JSON." }, response.status);
  }
}

/** Seconds the server asked us to wait (Retry-After), or `fallback`. */
export function retryAfter(response, fallback = 1) {
  const value = Number(response && response.headers.get("Retry-After"));
  return Number.isFinite(value) && value > 0 ? Math.min(value, 30) : fallback;
}

export const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));
