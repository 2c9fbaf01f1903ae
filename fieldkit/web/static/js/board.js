// The triage board: a card per patient, coloured by category, counts on top, sort and
// filter. Fetched once; then the live stream sends the card of each patient who changed
// ("board.row") and the board patches itself; it fetches the whole board again only when
// the stream says it cannot replay what was missed. Works from the service worker's copy
// when the kit is unreachable (marked stale).
import { api, fmtTime, initPage, live, showError, showStale, clearStale, TRIAGE_LABEL } from "./common.js";
import { assignCapture, shownName } from "./actions.js";
import { careOptions, dueAt, placeText } from "./care.js";
import { withPending } from "./offline.js";

const SHAPE = { red: "▲", yellow: "◆", green: "●" }; // the categories' shapes, as in app.css
const ORDER = { red: 0, yellow: 1, green: 2, grey: 3, black: 4, none: 5 };
const SYNC_LABEL = { none: "no captures", queued: "to send", sending: "sending", confirmed: "at hospital",
  quarantined: "refused — see Sync" };
let state = { patients: [], counts: {} };
let filter = null;
let inflight = null;
let probeNames = {}; // registered probes: AE title -> label
let retriageMinutes = {}; // category -> minutes before a re-triage is due (the kit's setting)
let skewMs = 0; // the kit's clock minus the tablet's, so waiting times count from the kit's timestamps
const canAssign = document.getElementById("tray").dataset.canAssign === "yes";

// One card, filled in place (a card that changes keeps its element).
function fillCard(li, p) {
  li.className = `card tri-${p.triage}`;
  li.dataset.patientId = p.id;
  li.dataset.triage = p.triage;
  li.querySelector("a").href = "/patients/" + encodeURIComponent(p.id);
  li.querySelector(".cat-label").textContent = TRIAGE_LABEL[p.triage] || p.triage;
  li.querySelector(".pid").textContent = p.tag ? `Tag ${p.tag}` : p.id;
  // only lines that say something: a tag-only card is its category, tag and time
  li.querySelector(".pname").textContent = p.display_name ? shownName(p) : (p.age ? `${p.age} y` : "");
  li.querySelector(".caps").textContent = `${p.captures} capture${p.captures === 1 ? "" : "s"}`;
  li.querySelector(".fnd").textContent = p.findings ? `· ${p.findings} finding${p.findings === 1 ? "" : "s"}` : "";
  li.querySelector(".meta").hidden = !p.captures && !p.findings; // "0 captures" says nothing
  const since = li.querySelector(".since");
  since.dataset.triagedAt = p.triaged_at || "";
  since.dataset.retriagedAt = p.retriaged_at || "";
  li.querySelector(".tri-by").textContent = p.triaged_by ? `by ${p.triaged_by}` : "";
  fillSince(since);
  li.querySelector(".place").textContent = placeText(p);
  li.querySelector(".fwords").textContent = (p.finding_words || []).join(" · ");
  const argues = li.querySelector(".argues");
  argues.hidden = !p.finding_argues;
  argues.textContent = p.finding_argues
    ? `${SHAPE[p.finding_argues.category]} Finding suggests ${TRIAGE_LABEL[p.finding_argues.category]}: ${p.finding_argues.why}` : "";
  const overdue = li.querySelector(".overdue");
  overdue.dataset.due = dueAt(p, retriageMinutes) || "";
  fillOverdue(overdue);
  const badge = li.querySelector(".sync-badge");
  badge.textContent = SYNC_LABEL[p.sync] || p.sync;
  badge.dataset.sync = p.sync;
  badge.hidden = !p.sync || p.sync === "none";
}

// "4 min" since a kit timestamp (seconds in the first minute, so a fresh triage visibly counts)
function ago(at) {
  const s = Math.max(0, Math.floor((Date.now() + skewMs) / 1000 - at));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function fillSince(span) {
  const t = parseFloat(span.dataset.triagedAt);
  const r = parseFloat(span.dataset.retriagedAt);
  span.textContent = !t ? "" : `triaged ${ago(t)} ago` + (r ? ` · re-triaged ${ago(r)} ago` : "");
}

// Past the category's re-triage interval (triage.retriage_minutes): flagged on the card
function fillOverdue(span) {
  const due = parseFloat(span.dataset.due);
  const late = due && (Date.now() + skewMs) / 1000 > due;
  span.hidden = !late;
  span.textContent = late ? `Re-triage overdue ${ago(due)}` : "";
  span.closest(".card").classList.toggle("is-overdue", !!late);
}

// The waiting times tick on the tablet from the timestamps the kit sent: no request.
setInterval(() => {
  document.querySelectorAll("#board .since").forEach(fillSince);
  document.querySelectorAll("#board .overdue").forEach(fillOverdue);
}, 1000);

function countsOf(patients) {
  const counts = { red: 0, yellow: 0, green: 0, grey: 0, black: 0, none: 0 };
  patients.forEach((p) => { if (!p.unassigned) counts[p.triage] = (counts[p.triage] || 0) + 1; });
  return counts;
}

function probeText(ae) {
  if (!ae) return "probe unknown";
  return probeNames[ae] ? `probe ${probeNames[ae]} (${ae})` : `probe ${ae}`;
}

// The tray: every capture of a record only a capture made, oldest first, above the cards.
function renderTray() {
  const items = [];
  state.patients.filter((p) => p.unassigned).forEach((p) => (p.tray || []).forEach((c) => items.push([p, c])));
  items.sort((a, b) => (a[1].received_at || 0) - (b[1].received_at || 0));
  const tray = document.getElementById("tray");
  const banner = document.getElementById("unassigned-banner");
  tray.hidden = !items.length;
  banner.hidden = !items.length;
  document.getElementById("unassigned-link").textContent = `${items.length} unassigned capture${items.length === 1 ? "" : "s"}: assign ${items.length === 1 ? "it" : "them"} to ${items.length === 1 ? "its patient" : "their patients"}`;
  banner.dataset.count = String(items.length);
  const tpl = document.getElementById("tray-template");
  const list = document.getElementById("tray-items");
  const shown = new Map();
  list.querySelectorAll(":scope > li").forEach((li) => shown.set(li.dataset.uid, li));
  const frag = document.createDocumentFragment();
  items.forEach(([p, c]) => {
    let li = shown.get(c.uid);
    if (!li) {
      li = tpl.content.firstElementChild.cloneNode(true);
      li.dataset.uid = c.uid;
      const img = li.querySelector("img");
      if (c.has_thumbnail) img.src = `/api/v1/ui/instances/${encodeURIComponent(c.uid)}/thumbnail.jpg`;
      else img.replaceWith(Object.assign(document.createElement("span"), { className: "failed", textContent: "no image" }));
      const btn = li.querySelector(".tray-assign");
      if (!canAssign) btn.remove();
      else btn.addEventListener("click", () => assignCapture({ uid: li.dataset.uid, from: li.dataset.from,
        label: li.dataset.label, hasThumbnail: !!li.querySelector("img"), onDone: () => {} }));
    }
    const meta = `${fmtTime(c.received_at)} · ${probeText(c.probe)} · ${c.frames} frame${c.frames === 1 ? "" : "s"}`;
    li.dataset.from = p.id;
    li.dataset.label = `Unassigned capture, ${meta}`;
    li.querySelector(".tray-view").href = "/patients/" + encodeURIComponent(p.id);
    li.querySelector(".tray-view").setAttribute("aria-label", `View the capture of ${fmtTime(c.received_at)}`);
    li.querySelector(".t-meta").textContent = meta;
    const btn = li.querySelector(".tray-assign");
    if (btn) btn.setAttribute("aria-label", `Assign to patient: capture of ${fmtTime(c.received_at)} from ${probeText(c.probe)}`);
    frag.appendChild(li);
  });
  list.replaceChildren(frag);
}

function render() {
  renderTray();
  const list = document.getElementById("board");
  const tpl = document.getElementById("card-template");
  const q = document.getElementById("board-search").value.trim().toLowerCase();
  const sort = document.getElementById("board-sort").value;
  Object.entries(state.counts || {}).forEach(([cat, n]) => {
    const c = document.querySelector(`[data-count="${cat}"]`);
    if (c) c.textContent = String(n);
  });
  let rows = state.patients.filter((p) => !p.unassigned && (!filter || p.triage === filter) &&
    (!q || [p.id, p.tag, p.name, p.display_name, ...(p.tags || [])].some((v) => (v || "").toLowerCase().includes(q))));
  if (sort === "recent") rows.sort((a, b) => Math.max(b.updated, b.last_capture) - Math.max(a.updated, a.last_capture));
  else if (sort === "tag") rows.sort((a, b) => String(a.tag || a.id).localeCompare(String(b.tag || b.id), undefined, { numeric: true }));
  // inside one category, who has waited longest (oldest triage) first
  else rows.sort((a, b) => (ORDER[a.triage] - ORDER[b.triage]) ||
    ((a.triaged_at || a.created || 0) - (b.triaged_at || b.created || 0)));
  const shown = new Map();
  list.querySelectorAll(":scope > li").forEach((li) => shown.set(li.dataset.patientId, li));
  const frag = document.createDocumentFragment();
  rows.forEach((p) => {
    const li = shown.get(p.id) || tpl.content.firstElementChild.cloneNode(true);
    fillCard(li, p);
    frag.appendChild(li);
  });
  list.replaceChildren(frag);
  document.getElementById("board-empty").hidden = state.patients.some((p) => !p.unassigned);
}

let drawing = null;
function redrawSoon() { // a burst of rows (a cine push, a sync batch) is drawn once
  if (!drawing) drawing = requestAnimationFrame(() => { drawing = null; render(); });
}

// A patient's new card from the live stream, or their removal (row null: merged away).
function patch(id, row) {
  const i = state.patients.findIndex((p) => p.id === id);
  if (row && i >= 0) state.patients[i] = row;
  else if (row) state.patients.push(row);
  else if (i >= 0) state.patients.splice(i, 1);
  else return;
  state.counts = countsOf(state.patients);
  redrawSoon();
}

async function refresh() {
  if (inflight) return inflight;
  inflight = (async () => {
    try {
      let data = await api("/api/v1/ui/board");
      if (data.__stale) data = await withPending(data); // with the changes this tablet keeps to send
      state = data;
      if (!data.__stale && data.at) skewMs = data.at * 1000 - Date.now();
      if (data.__stale) {
        const when = typeof data.__stale === "number" ? fmtTime(data.__stale) : "earlier";
        showStale(`Stale: the kit cannot be reached. This is the board as last seen at ${when}.`);
        document.getElementById("board").classList.add("stale");
      } else {
        clearStale();
        document.getElementById("board").classList.remove("stale");
      }
      showError("");
      render();
      return data;
    } catch (e) {
      if (e.status !== 401) showError(e.message);
      return null;
    } finally { inflight = null; }
  })();
  return inflight;
}

document.querySelectorAll(".count").forEach((b) => b.addEventListener("click", () => {
  filter = filter === b.dataset.filter ? null : b.dataset.filter;
  document.querySelectorAll(".count").forEach((o) => o.setAttribute("aria-pressed", String(o.dataset.filter === filter)));
  render();
}));
document.getElementById("board-search").addEventListener("input", render);
document.getElementById("board-sort").addEventListener("change", render);

// Disk space: a banner when the kit's disk runs low (what to do) or captures are refused.
async function diskBanner() {
  const box = document.getElementById("disk-banner");
  try {
    const disk = (await api("/api/v1/status")).disk;
    box.hidden = !disk || disk.level === "ok";
    box.dataset.level = (disk && disk.level) || "";
    box.textContent = (disk && disk.message) ? `Storage: ${disk.message}.` : "";
  } catch (e) { /* the board's own errors are shown by refresh() */ }
}

// Registered probes' labels, for the tray (asked once; an AE title alone is shown meanwhile)
async function loadProbes() {
  try {
    const { probes } = await api("/api/v1/probes");
    probeNames = Object.fromEntries(probes.filter((p) => p.name).map((p) => [p.ae, p.name]));
    redrawSoon();
  } catch (e) { /* the tray still shows AE titles */ }
}

loadProbes();
careOptions().then((o) => { retriageMinutes = o.retriage_minutes || {}; redrawSoon(); }).catch(() => {});
diskBanner();
setInterval(diskBanner, 30000);
refresh().then((data) => {
  // the stream starts where the fetched board stands; from then on, only changed cards come
  live((topic, data) => { if (topic === "board.row") patch(data.id, data.row); },
    () => refresh(), [], { board: true, since: data && !data.__stale ? data.live_id : "" });
});
initPage(() => refresh());
