// The server's REST API, as the CLI uses it: POST with JSON and a bearer token.
// The token lives in localStorage (this origin only); a 403 on any call signs out.

const TOKEN_KEY = "dstack.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

/** `#token=...` in the address: sign in with it and drop it from the address bar and history. */
export function takeTokenFromUrl() {
  const params = new URLSearchParams(location.hash.slice(1));
  const value = params.get("token");
  if (!value) return false;
  setToken(value);
  history.replaceState(null, "", location.pathname + location.search);
  return true;
}

function message(status, body) {
  const detail = body && body.detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => (d.loc ? `${d.loc.join(".")}: ${d.msg}` : d.msg)).join("; ");
  }
  if (typeof detail === "string") return detail;
  return `HTTP ${status}`;
}

let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

async function send(method, path, body, signal) {
  const headers = { Authorization: `Bearer ${token() || ""}` };
  const init = { method, headers, signal };
  if (method === "POST") {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const err = new ApiError(response.status, message(response.status, data));
    if (response.status === 403 && /token/i.test(err.message)) onUnauthorized(err);
    throw err;
  }
  return data;
}

export const post = (path, body, signal) => send("POST", path, body, signal);
export const get = (path, signal) => send("GET", path, null, signal);
export const enc = encodeURIComponent;
