// Shared by every page: API calls with CSRF, sign-in recovery that keeps what was typed,
// the live-update stream (with a polling fallback), the stale banner and the service
// worker. Data is only ever put in the page with textContent (never innerHTML).
import { backOnline, forgetKeys, forgetOffline, keepWrite, keptPatient, startOffline } from "./offline.js";
import { LOCALE, t } from "./i18n.js";

export { t, fmtNumber, LANG, LOCALE } from "./i18n.js";

const DRAFT_PREFIX = "fieldkit.draft.";

export function csrfToken() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.getAttribute("content") : "";
}

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// Save every form marked data-draft, so a sign-in round trip loses nothing typed.
export function saveDrafts() {
  document.querySelectorAll("form[data-draft]").forEach((form) => {
    const values = {};
    form.querySelectorAll("input, select, textarea").forEach((el) => {
      if (!el.name || el.type === "hidden" || el.type === "password") return;
      if (el.type === "radio" || el.type === "checkbox") { if (el.checked) values[el.name] = el.value; }
      else if (el.value) values[el.name] = el.value;
    });
    try { sessionStorage.setItem(DRAFT_PREFIX + form.dataset.draft, JSON.stringify(values)); } catch (e) { /* full */ }
  });
}

export function restoreDrafts() {
  document.querySelectorAll("form[data-draft]").forEach((form) => {
    const key = DRAFT_PREFIX + form.dataset.draft;
    let values = null;
    try { values = JSON.parse(sessionStorage.getItem(key) || "null"); } catch (e) { values = null; }
    if (!values) return;
    sessionStorage.removeItem(key);
    Object.entries(values).forEach(([name, value]) => {
      form.querySelectorAll(`[name="${CSS.escape(name)}"]`).forEach((el) => {
        if (el.type === "radio" || el.type === "checkbox") el.checked = el.value === value;
        else el.value = value;
        el.dispatchEvent(new Event("change", { bubbles: true }));
      });
    });
  });
}

let leaving = false;

export function toSignIn() {
  if (leaving) return; // several requests may find the session gone at once
  leaving = true;
  saveDrafts();
  const next = location.pathname + location.search;
  // the session ended: the offline key goes first (bounded: going to sign-in must not hang)
  const bounded = new Promise((resolve) => setTimeout(resolve, 2000));
  Promise.race([forgetKeys(), bounded]).catch(() => {}).finally(() =>
    location.assign("/login?next=" + encodeURIComponent(next)));
}

let staleShown = false;

export function showStale(text) {
  const b = document.getElementById("stale-banner");
  if (!b) return;
  b.textContent = text;
  b.hidden = false;
  staleShown = true;
  document.body.classList.add("is-stale");
}

export function clearStale() {
  const b = document.getElementById("stale-banner");
  if (b && staleShown) { b.hidden = true; b.textContent = ""; }
  staleShown = false;
  document.body.classList.remove("is-stale");
}

export function showError(text) {
  const b = document.getElementById("error-banner");
  if (!b) return;
  b.textContent = text || "";
  b.hidden = !text;
}

// fetch JSON; POSTs carry the CSRF token. 401 -> sign in again (drafts kept).
export async function api(path, { method = "GET", body = undefined } = {}) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") { headers["X-CSRF-Token"] = csrfToken(); headers["Content-Type"] = "application/json"; }
  let res;
  try {
    res = await fetch(path, { method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    // out of reach: a write that can wait is kept on the tablet (offline.js), a patient is
    // shown as this tablet last saw them; anything else says the kit cannot be reached
    let kept = null;
    try {
      kept = method === "GET" ? await keptPatient(path) : await keepWrite(path, body || {});
    } catch (err) {
      throw new ApiError(0, t("The kit cannot be reached, and this was not kept: {reason}", { reason: err.message }));
    }
    if (kept) return kept;
    throw new ApiError(0, method === "GET" ? t("Not available offline: the kit cannot be reached. Check the kit's Wi-Fi.")
      : t("The kit cannot be reached. Check the kit's Wi-Fi."));
  }
  if (res.status === 401) { toSignIn(); throw new ApiError(401, t("Signed out: sign in again.")); }
  if (!res.headers.get("X-Fieldkit-Stale")) backOnline();
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) throw new ApiError(res.status, (data && data.error) || t("The kit answered {status}.", { status: res.status }));
  if (res.headers.get("X-Fieldkit-Stale")) {
    const at = Number(res.headers.get("X-Fieldkit-Cached-At") || 0);
    data.__stale = at || true;
  }
  return data;
}

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// START category names in the page's language (which words each language uses: README, Languages)
export const TRIAGE_LABEL = { red: t("Immediate"), yellow: t("Delayed"), green: t("Minor"), black: t("Deceased"),
  grey: t("Expectant"), none: t("Not triaged") };

export function fmtTime(t) {
  if (!t) return "–";
  const d = new Date(t * 1000);
  return new Intl.DateTimeFormat(LOCALE, { hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(d);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(2)} GiB`;
}

function setLiveState(text, ok) {
  const s = document.getElementById("live-state");
  if (s) { s.textContent = text; s.dataset.state = ok ? "live" : "down"; }
}

let streaming = false; // a page that calls live() shows the stream's state

// A page without a live stream (New patient, handover…) says whether the kit answers, rather
// than "connecting…" for ever; checked every 15 s and when the tablet's network changes.
function watchKit() {
  if (!document.getElementById("live-state")) return;
  const check = async () => {
    if (streaming) return;
    let ok = false;
    try {
      const res = await fetch("/healthz", { cache: "no-store", credentials: "same-origin" });
      await res.arrayBuffer(); // read to the end: an unread body keeps the request open
      ok = res.ok;
    } catch (e) { ok = false; }
    if (!streaming) setLiveState(ok ? t("kit reachable") : t("kit unreachable"), ok);
  };
  check();
  const timer = setInterval(check, 15000);
  window.addEventListener("online", check);
  window.addEventListener("offline", check);
  window.addEventListener("pagehide", () => clearInterval(timer));
}

// Live updates: onEvent(topic, data) for every event; onResync() when the view must be
// fetched again: after (re)connecting when the kit could not replay what was missed (the
// stream says `resumed: false` or sends `refetch`), and while polling. A stream that
// drops resumes from the last event id, so a few missed events cost no refetch.
// opts.board: also receive "board.row" (a patient's new card); opts.since: the event id
// the view was fetched at (the board's live_id), so nothing between is lost.
export function live(onEvent, onResync, topics, opts = {}) {
  streaming = true;
  let es = null;
  let pollTimer = null;
  let retryTimer = null;
  let failures = 0;
  let lastId = opts.since || "";
  const all = (topics || ["instance.stored", "instance.conflict", "finding.stored", "finding.reviewed",
    "inference.skipped", "patient.updated", "patient.merged", "sync.confirmed", "sync.quarantined", "sync.retry",
    "power.policy"]).concat(opts.board ? ["board.row"] : []);

  function startPolling() {
    if (pollTimer) return;
    pollTimer = setInterval(() => onResync && onResync(), 5000);
  }
  function stopPolling() { if (pollTimer) { clearInterval(pollTimer); pollTimer = null; } }
  function remember(ev) { if (ev.lastEventId) lastId = ev.lastEventId; }
  function parse(ev) { try { return JSON.parse(ev.data); } catch (e) { return {}; } }

  function connect() {
    retryTimer = null;
    const q = new URLSearchParams();
    if (opts.board) q.set("board", "1");
    if (lastId) q.set("last", lastId); // a new EventSource does not send Last-Event-ID itself
    es = new EventSource("/api/v1/live" + (q.toString() ? "?" + q : ""));
    es.addEventListener("hello", (ev) => {
      remember(ev);
      failures = 0;
      stopPolling();
      setLiveState(t("live"), true);
      if (!parse(ev).resumed) onResync && onResync();
    });
    es.addEventListener("refetch", (ev) => { remember(ev); onResync && onResync(); });
    all.forEach((t) => es.addEventListener(t, (ev) => {
      remember(ev);
      onEvent(t, parse(ev));
    }));
    es.addEventListener("error", () => {
      if (es.readyState === EventSource.CLOSED) {
        // refused (busy or signed out) or the kit is gone: poll, try again later
        es.close();
        failures += 1;
        setLiveState(navigator.onLine ? t("reconnecting…") : t("offline"), false);
        startPolling();
        const delay = Math.min(30000, 2000 * failures) + Math.random() * 2000;
        if (!retryTimer) retryTimer = setTimeout(connect, delay);
      } else {
        setLiveState(t("reconnecting…"), false); // the browser reconnects, sending Last-Event-ID
      }
    });
  }
  connect();
  window.addEventListener("pagehide", () => { if (es) es.close(); stopPolling(); });
}

// Service worker: the app shell and the last board survive a reload without the kit.
export function registerServiceWorker(onControl) {
  if (!("serviceWorker" in navigator)) return;
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => { /* insecure context */ });
  if (onControl) navigator.serviceWorker.addEventListener("controllerchange", onControl);
}

// What this tablet keeps that names patients: the offline board (sw.js's data cache), the
// cached board page, and form drafts. Sign-out removes them before the session ends, so a
// signed-out tablet that is then stolen gives up none of it.
export async function forgetPatientData() {
  try {
    Object.keys(sessionStorage).filter((k) => k.startsWith(DRAFT_PREFIX)).forEach((k) => sessionStorage.removeItem(k));
  } catch (e) { /* storage disabled: nothing kept */ }
  await forgetOffline(); // the offline queue and its keys
  if (!window.caches) return;
  await caches.delete("fieldkit-data-v1");
  const shell = await caches.open("fieldkit-shell-v1");
  await Promise.all(["/", "/patients/new", "/patients/__offline__"].map((page) => shell.delete(page)));
}

function wireLogout() {
  const f = document.getElementById("logout-form");
  if (!f) return;
  f.addEventListener("submit", (event) => {
    // wait for the removal (not a fire-and-forget that the next page load may cut short),
    // but never more than 3 s: signing out must not hang
    event.preventDefault();
    const bounded = new Promise((resolve) => setTimeout(resolve, 3000));
    Promise.race([forgetPatientData(), bounded]).catch(() => {}).finally(() => f.submit());
  });
}

// Each page calls this once its own handlers are wired.
export function initPage(onControl) {
  restoreDrafts();
  wireLogout();
  registerServiceWorker(onControl);
  startOffline();
  watchKit();
}
