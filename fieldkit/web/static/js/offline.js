// Offline writes: when the kit cannot be reached, a registration, re-triage or note is kept
// on this tablet, shown as "n to send", and sent when the kit is back, in order, each with
// the ID the tablet made for it and the time it was made (the kit applies each once).
//
// What is kept names patients, so it is never in clear: each change is encrypted with
// AES-GCM (WebCrypto) under the signed-in person's key, which the kit gives a session
// (/api/v1/offline/key) and the tablet keeps as a non-extractable CryptoKey. When the session
// ends the tablet forgets the key (forgetKeys: expiry, the kit locked; the encrypted queue
// stays, to be sent when the same person signs in again); sign-out deletes keys and queue
// (forgetOffline). A queue that does not decrypt (altered, or kept under another person's
// key) is refused as a whole: set aside, never sent, and the tablet says so.
// This module needs nothing from the others but its words (common.js calls it).
import { LOCALE, t } from "./i18n.js";

const DB_NAME = "fieldkit-offline";
const BOARD_API = "/api/v1/ui/board";
const DATA_CACHE = "fieldkit-data-v1";
const CHUNK = 100; // changes per replay request (the kit takes at most 200)
const RETRY_MS = 5000;
const enc = new TextEncoder();
const dec = new TextDecoder();

// ----------------------------------------------------------------------------- IndexedDB
function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => {
      const db = req.result;
      db.createObjectStore("keys", { keyPath: "kid" });
      db.createObjectStore("queue", { keyPath: "seq", autoIncrement: true });
      db.createObjectStore("aside", { keyPath: "seq", autoIncrement: true });
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function tx(stores, mode, fn) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const t = db.transaction(stores, mode);
      let out;
      Promise.resolve(fn(t)).then((v) => { out = v; });
      t.oncomplete = () => resolve(out);
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error || new Error("aborted"));
    });
  } finally { db.close(); }
}

const req2p = (r) => new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error); });

async function allRecords(store) {
  return tx([store], "readonly", (t) => req2p(t.objectStore(store).getAll()));
}

// ----------------------------------------------------------------------------- the key
function csrf() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.getAttribute("content") : "";
}

// The session ended: without the key, nothing kept can be read or sent until the same
// person signs in again.
export async function forgetKeys() {
  try {
    // a tablet that keeps nothing (never signed in, or signed out) is not given an empty database
    if (indexedDB.databases && !(await indexedDB.databases()).some((d) => d.name === DB_NAME)) return;
    await tx(["keys"], "readwrite", (t) => t.objectStore("keys").clear());
  } catch (e) { /* no database */ }
}

// Ask the kit for the signed-in person's key (when it can be reached); keep it for offline use.
// "offline" when the kit cannot be reached (the key kept earlier is used).
export async function fetchKey() {
  let res;
  try {
    res = await fetch("/api/v1/offline/key", { credentials: "same-origin", headers: { Accept: "application/json" } });
  } catch (e) { return "offline"; }
  if (res.status === 401) await forgetKeys();
  if (!res.ok) return false; // signed out, or a role that may not write
  const { kid, key } = await res.json();
  const raw = Uint8Array.from(atob(key), (c) => c.charCodeAt(0));
  const cryptoKey = await crypto.subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
  await tx(["keys"], "readwrite", (t) => {
    const s = t.objectStore("keys");
    s.put({ kid, key: cryptoKey });
    s.put({ kid: "current", ref: kid });
  });
  return true;
}

async function keyFor(kid) {
  const row = await tx(["keys"], "readonly", (t) => req2p(t.objectStore("keys").get(kid)));
  return row ? row.key : null;
}

async function currentKid() {
  const row = await tx(["keys"], "readonly", (t) => req2p(t.objectStore("keys").get("current")));
  return row ? row.ref : null;
}

async function seal(change) {
  const kid = await currentKid();
  const key = kid && await keyFor(kid);
  if (!key) throw new Error(t("this tablet holds no offline key (sign in while the kit is reachable first)"));
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: enc.encode(kid) }, key,
    enc.encode(JSON.stringify(change)));
  return { kid, iv, ct: new Uint8Array(ct) };
}

async function open(rec) {
  const key = await keyFor(rec.kid);
  if (!key) throw new Error("no key");
  const pt = await crypto.subtle.decrypt({ name: "AES-GCM", iv: rec.iv, additionalData: enc.encode(rec.kid) },
    key, rec.ct);
  return JSON.parse(dec.decode(pt));
}

// ----------------------------------------------------------------------------- the queue
function newId() {
  return crypto.randomUUID ? crypto.randomUUID() : Array.from(crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0")).join("");
}

async function enqueue(change) {
  const rec = await seal(change);
  await tx(["queue"], "readwrite", (t) => t.objectStore("queue").add(rec));
  showCount();
}

// The queued changes in order, decrypted; null when any fails to decrypt or authenticate.
async function queued() {
  const recs = await allRecords("queue");
  try {
    return await Promise.all(recs.map(async (r) => ({ seq: r.seq, change: await open(r) })));
  } catch (e) {
    return null;
  }
}

async function setAside() {
  await tx(["queue", "aside"], "readwrite", async (t) => {
    const q = t.objectStore("queue");
    const recs = await req2p(q.getAll());
    recs.forEach((r) => { const { seq, ...rest } = r; t.objectStore("aside").add({ ...rest, at: Date.now() / 1000 }); });
    q.clear();
  });
}

export async function pendingCount() {
  try { return await tx(["queue"], "readonly", (t) => req2p(t.objectStore("queue").count())); } catch (e) { return 0; }
}

// ----------------------------------------------------------------------------- what the tablet shows
function countBox() {
  let box = document.getElementById("offline-count");
  const tools = document.querySelector("header .tools");
  if (!box && tools) {
    box = document.createElement("span");
    box.id = "offline-count";
    box.className = "offline-count";
    box.setAttribute("role", "status");
    box.hidden = true;
    tools.prepend(box);
  }
  return box;
}

export async function showCount() {
  const box = countBox();
  if (!box) return;
  const n = await pendingCount();
  box.textContent = t("{n} to send", { n });
  box.dataset.count = String(n);
  box.hidden = n === 0;
}

// The note that a page shows what this tablet kept: gone once the kit answers again.
export function backOnline() {
  const box = document.getElementById("offline-banner");
  if (box && box.dataset.kind === "offline") say("");
}

function say(text, kind = "") {
  let box = document.getElementById("offline-banner");
  if (!box) {
    const after = document.getElementById("error-banner");
    if (!after) return;
    box = document.createElement("div");
    box.id = "offline-banner";
    box.className = "banner error";
    box.setAttribute("role", "alert");
    after.after(box);
  }
  box.textContent = text;
  box.dataset.kind = kind;
  box.className = kind === "offline" ? "banner stale" : "banner error";
  box.hidden = !text;
}

// ----------------------------------------------------------------------------- writes kept offline
const TRIAGE = /^\/api\/v1\/ui\/patients\/([^/]+)\/triage$/;
const DETAILS = /^\/api\/v1\/ui\/patients\/([^/]+)\/details$/;
const PATIENT = /^\/api\/v1\/ui\/patients\/([^/]+)$/;
const LOCAL = "offline-"; // a patient registered offline without a tag, until the kit gives it an ID
let shown = {}; // what the offline patient page showed (age, sex), so an edit of those is noticed

function target(pid) {
  return pid.startsWith(LOCAL) ? { ref: pid.slice(LOCAL.length) } : { patient: pid };
}

// A write the kit could not receive: kept when it is one that can wait, and answered the way
// the kit would have; null when it cannot be kept (the caller then shows the usual error).
export async function keepWrite(path, body) {
  const at = Date.now() / 1000;
  const id = newId();
  let m;
  if (path === "/api/v1/ui/patients") {
    const tag = (body.tag || "").trim();
    await enqueue({ id, kind: "register", at, tag, triage: body.triage || "none" });
    const pid = tag || LOCAL + id;
    return { patient: { id: pid, tag: tag || null, triage: body.triage || "none" }, proposed: null, offline: true };
  }
  if ((m = path.match(TRIAGE))) {
    const pid = decodeURIComponent(m[1]);
    await enqueue({ id, kind: "triage", at, ...target(pid), triage: body.triage, expected: body.expected });
    return { patient: { id: pid, triage: body.triage }, triage_history: [], offline: true };
  }
  if ((m = path.match(DETAILS))) {
    const pid = decodeURIComponent(m[1]);
    const was = shown[pid] || {};
    const changed = body.name !== undefined || String(body.age ?? "") !== String(was.age ?? "") ||
      String(body.sex ?? "") !== String(was.sex ?? "");
    if (changed) throw new Error(t("Name, age and sex need the kit: only a note can be kept on this tablet while it is out of reach."));
    if (!(body.note || "").trim()) return null;
    await enqueue({ id, kind: "note", at, ...target(pid), text: body.note });
    return { patient: { id: pid }, notes: [], offline: true };
  }
  return null;
}

// ----------------------------------------------------------------------------- reads offline
function hhmm(at) {
  return new Date(at * 1000).toLocaleTimeString(LOCALE, { hour: "2-digit", minute: "2-digit" });
}

async function cachedBoard() {
  if (!window.caches) return null;
  const res = await (await caches.open(DATA_CACHE)).match(BOARD_API);
  if (!res) return null;
  return { data: await res.json(), at: Number(res.headers.get("X-Fieldkit-Cached-At") || 0) };
}

// A patient as the kept board showed them, with the changes still to send applied; null when
// this tablet kept nothing of them. Marked with the time of the copy.
export async function keptPatient(path) {
  const m = path.match(PATIENT);
  if (!m) return null;
  const pid = decodeURIComponent(m[1]);
  const board = await cachedBoard();
  let row = board && (board.data.patients || []).find((p) => p.id === pid || p.tag === pid || (p.tags || []).includes(pid));
  const changes = (await queued()) || [];
  const mine = (c) => (row && (c.patient === row.id || c.patient === row.tag)) || c.patient === pid ||
    (pid.startsWith(LOCAL) && c.ref === pid.slice(LOCAL.length));
  let localAt = 0;
  changes.forEach(({ change: c }) => {
    if (c.kind === "register" && !row && ((c.tag && c.tag === pid) || LOCAL + c.id === pid)) {
      row = { id: pid, tag: c.tag || null, triage: c.triage, age: null, sex: "", display_name: "" };
      localAt = c.at;
    }
  });
  if (!row) return null;
  row = { ...row };
  const notes = [];
  changes.forEach(({ change: c }) => {
    if (!mine(c) && !(c.kind === "register" && LOCAL + c.id === pid)) return;
    if (c.kind === "triage") row.triage = c.triage;
    if (c.kind === "note") notes.push({ text: c.text + " " + t("(to send)"), at: c.at, by: "" });
  });
  shown[pid] = { age: row.age, sex: row.sex };
  const at = board && board.at ? board.at : localAt;
  const earlier = t("earlier");
  say(t("Offline — as of {when}: the kit cannot be reached. This is what this tablet kept; changes are kept and sent when the kit is back.",
    { when: at ? hhmm(at) : earlier }), "offline");
  return { ...row, triage_history: [], notes, captures: [], tags: row.tag ? [row.tag] : [], probe_sessions: [],
    display_name: row.display_name || "", name_from_probe: false, unassigned: false, __stale: at || true };
}

// Cards for the kept board: registrations not sent yet, and the categories changed meanwhile.
export async function withPending(data) {
  const changes = await queued();
  if (!changes || !changes.length) return data;
  const patients = (data.patients || []).map((p) => ({ ...p }));
  // the kept copy is the board's first page: the whole board's counts are moved by each change
  const counts = { red: 0, yellow: 0, green: 0, grey: 0, black: 0, none: 0, ...(data.counts || {}) };
  let total = data.total || 0;
  changes.forEach(({ change: c }) => {
    if (c.kind === "register") {
      const pid = c.tag || LOCAL + c.id;
      if (!patients.some((p) => p.id === pid || p.tag === pid)) {
        patients.push({ id: pid, tag: c.tag || null, triage: c.triage, captures: 0, findings: 0, sync: "none",
          updated: c.at, last_capture: 0, created: c.at, triaged_at: c.at, display_name: "", pending: true });
        counts[c.triage] = (counts[c.triage] || 0) + 1;
        total += 1;
      }
    } else if (c.kind === "triage") {
      const pid = c.patient || LOCAL + c.ref;
      const p = patients.find((x) => x.id === pid || x.tag === pid);
      if (p) {
        if (!p.unassigned) { counts[p.triage] = Math.max(0, (counts[p.triage] || 0) - 1); counts[c.triage] = (counts[c.triage] || 0) + 1; }
        p.triage = c.triage;
        p.retriaged_at = c.at;
      }
    }
  });
  return { ...data, patients, counts, total };
}

// ----------------------------------------------------------------------------- replay
let replaying = null;

// The session's CSRF token as the kit says it now (a page served offline may carry an older one)
async function freshCsrf() {
  const res = await fetch("/api/v1/session", { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (res.status === 401) await forgetKeys();
  if (!res.ok) throw Object.assign(new Error(t("The kit answered {status}.", { status: res.status })), { status: res.status });
  return (await res.json()).csrf_token || csrf();
}

async function sendChunk(changes, token) {
  const res = await fetch("/api/v1/offline/replay", { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": token },
    body: JSON.stringify({ changes }) });
  if (!res.ok) throw Object.assign(new Error(t("The kit answered {status}.", { status: res.status })), { status: res.status });
  return (await res.json()).results;
}

// Send what is queued, in order; each change leaves the queue once the kit has answered for it.
export function replay() {
  if (replaying) return replaying;
  replaying = (async () => {
    if (!(await pendingCount())) return;
    let token;
    try { token = await freshCsrf(); } catch (e) { return; } // kit still away, or signed out: later
    const items = await queued();
    if (items === null) {
      await setAside();
      say(t("The changes kept on this tablet could not be read (altered, or kept under another person's key). They were set aside and not sent: enter them again."));
      return;
    }
    const notes = [];
    for (let i = 0; i < items.length; i += CHUNK) {
      const part = items.slice(i, i + CHUNK);
      let results;
      try { results = await sendChunk(part.map((x) => x.change), token); } catch (e) { break; }
      await tx(["queue"], "readwrite", (t) => part.forEach((x) => t.objectStore("queue").delete(x.seq)));
      results.forEach((r) => {
        if (r.status === "refused") notes.push(t("Not recorded: {reason}", { reason: r.reason }));
        else if (r.flagged) notes.push(t("Recorded, to review: {what}", { what: r.flagged }));
        else if (r.reason) notes.push(r.reason);
      });
    }
    if (notes.length) say(notes.join(" · "));
  })().catch(() => {}).finally(() => { replaying = null; showCount(); });
  return replaying;
}

// Sign-out: keys, queue and what was set aside all go.
export function forgetOffline() {
  return new Promise((resolve) => {
    const r = indexedDB.deleteDatabase(DB_NAME);
    r.onsuccess = r.onerror = r.onblocked = () => resolve();
  });
}

let started = false;

export async function startOffline() {
  if (started || !document.getElementById("logout-form")) return; // signed-in pages only
  started = true;
  await showCount();
  const got = await fetchKey();
  if (got === true) {
    document.body.dataset.offline = "ready"; // this tablet can keep changes if the kit goes away
    await replay();
  } else if (got === "offline" && await currentKid()) {
    document.body.dataset.offline = "ready";
    if (document.body.dataset.page === "new") {
      say(t("Offline: the kit cannot be reached. Patients registered now are kept on this tablet and sent when it is back."), "offline");
    }
  }
  window.addEventListener("online", () => { fetchKey().then(() => replay()); });
  setInterval(async () => { if (await pendingCount()) replay(); }, RETRY_MS);
}
