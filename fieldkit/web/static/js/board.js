// The triage board: a card per patient, coloured by category, counts on top, sort and
// filter. The kit sends it a page at a time in board order ("Show more" loads the next
// page; the category filter and the search ask the kit) with the whole board's counts.
// Then the live stream sends the card of each patient who changed ("board.row", with the
// new counts) and the board patches the cards it shows; it loads the first page again only
// when the stream says it cannot replay what was missed. Works from the service worker's
// copy of the first page when the kit is unreachable (marked stale).
import { api, fmtTime, initPage, live, showError, showStale, clearStale, t, TRIAGE_LABEL } from "./common.js";
import { assignCapture, shownName } from "./actions.js";
import { careOptions, dueAt, placeText } from "./care.js";
import { cardFindingWords } from "./finding_words.js";
import { withPending } from "./offline.js";

const SHAPE = { red: "▲", yellow: "◆", green: "●" }; // the categories' shapes, as in app.css
const ORDER = { red: 0, yellow: 1, green: 2, black: 3, grey: 4, none: 5 }; // the kit's board order
const SYNC_LABEL = { none: t("no captures"), queued: t("to send"), sending: t("sending"), confirmed: t("at hospital"),
  quarantined: t("refused — see Sync") };
// patients: the cards loaded so far, in board order; holders: records whose captures wait in the tray
let state = { patients: [], holders: [], counts: {}, more: 0, next: null };
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
  li.querySelector(".pid").textContent = p.tag ? t("Tag {tag}", { tag: p.tag }) : p.id;
  // only lines that say something: a tag-only card is its category, tag and time
  li.querySelector(".pname").textContent = p.display_name ? shownName(p) : (p.age ? t("{n} y", { n: p.age }) : "");
  li.querySelector(".caps").textContent = p.captures === 1 ? t("1 capture") : t("{n} captures", { n: p.captures });
  li.querySelector(".fnd").textContent = p.findings ? "· " + (p.findings === 1 ? t("1 finding") : t("{n} findings", { n: p.findings })) : "";
  li.querySelector(".meta").hidden = !p.captures && !p.findings; // "0 captures" says nothing
  const since = li.querySelector(".since");
  since.dataset.triagedAt = p.triaged_at || "";
  since.dataset.retriagedAt = p.retriaged_at || "";
  li.querySelector(".tri-by").textContent = p.triaged_by ? t("by {who}", { who: p.triaged_by }) : "";
  fillSince(since);
  li.querySelector(".place").textContent = placeText(p);
  const words = cardFindingWords(p);
  li.querySelector(".fwords").textContent = words.all.join(" · ");
  const argues = li.querySelector(".argues");
  argues.hidden = !p.finding_argues;
  argues.textContent = p.finding_argues
    ? `${SHAPE[p.finding_argues.category]} ` + t("Finding suggests {category}: {why}",
      { category: TRIAGE_LABEL[p.finding_argues.category], why: words.why }) : "";
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
  if (s < 60) return t("{n} s", { n: s });
  const m = Math.floor(s / 60);
  return m < 60 ? t("{n} min", { n: m }) : t("{h} h {m} min", { h: Math.floor(m / 60), m: m % 60 });
}

function fillSince(span) {
  const at = parseFloat(span.dataset.triagedAt);
  const r = parseFloat(span.dataset.retriagedAt);
  span.textContent = !at ? "" : t("triaged {ago} ago", { ago: ago(at) })
    + (r ? " · " + t("re-triaged {ago} ago", { ago: ago(r) }) : "");
}

// Past the category's re-triage interval (triage.retriage_minutes): flagged on the card
function fillOverdue(span) {
  const due = parseFloat(span.dataset.due);
  const late = due && (Date.now() + skewMs) / 1000 > due;
  span.hidden = !late;
  span.textContent = late ? t("Re-triage overdue {ago}", { ago: ago(due) }) : "";
  span.closest(".card").classList.toggle("is-overdue", !!late);
}

// The waiting times tick on the tablet from the timestamps the kit sent: no request.
setInterval(() => {
  document.querySelectorAll("#board .since").forEach(fillSince);
  document.querySelectorAll("#board .overdue").forEach(fillOverdue);
}, 1000);

// Board order, as the kit pages it: most urgent category first, then who has waited longest
function before(a, b) {
  return (ORDER[a.triage] - ORDER[b.triage]) || ((a.triaged_at || a.created || 0) - (b.triaged_at || b.created || 0)) ||
    (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

function searchText() { return document.getElementById("board-search").value.trim(); }

// Whether a card belongs in the view asked of the kit (its category filter and search)
function inView(p) {
  const q = searchText().toLowerCase();
  return !p.unassigned && (!filter || p.triage === filter) &&
    (!q || [p.id, p.tag, p.name, p.display_name, ...(p.tags || [])].some((v) => (v || "").toLowerCase().includes(q)));
}

// Cards matching the view after the loaded ones: known from the counts unless searching
function moreAfter() {
  if (searchText()) return Math.max(0, state.more);
  const n = filter ? (state.counts[filter] || 0) : Object.values(state.counts || {}).reduce((a, b) => a + b, 0);
  return Math.max(0, n - state.patients.length);
}

function probeText(ae) {
  if (!ae) return t("probe unknown");
  return probeNames[ae] ? t("probe {name} ({ae})", { name: probeNames[ae], ae }) : t("probe {probe}", { probe: ae });
}

// The tray: every capture of a record only a capture made, oldest first, above the cards.
function renderTray() {
  const items = [];
  state.holders.forEach((p) => (p.tray || []).forEach((c) => items.push([p, c])));
  items.sort((a, b) => (a[1].received_at || 0) - (b[1].received_at || 0));
  const tray = document.getElementById("tray");
  const banner = document.getElementById("unassigned-banner");
  // the kit sends the oldest of them (per record and on the first page); the banner counts them all
  const total = Math.max(items.length, state.unassigned || 0);
  tray.hidden = !items.length;
  banner.hidden = !total;
  document.getElementById("unassigned-link").textContent = total === 1
    ? t("1 unassigned capture: assign it to its patient")
    : t("{n} unassigned captures: assign them to their patients", { n: total });
  banner.dataset.count = String(total);
  const tpl = document.getElementById("tray-template");
  const list = document.getElementById("tray-items");
  const shown = new Map();
  list.querySelectorAll(":scope > li").forEach((li) => shown.set(li.dataset.uid, li));
  const placed = [];
  items.forEach(([p, c]) => {
    let li = shown.get(c.uid);
    if (!li) {
      li = tpl.content.firstElementChild.cloneNode(true);
      li.dataset.uid = c.uid;
      const img = li.querySelector("img");
      if (c.has_thumbnail) img.src = `/api/v1/ui/instances/${encodeURIComponent(c.uid)}/thumbnail.jpg`;
      else img.replaceWith(Object.assign(document.createElement("span"), { className: "failed", textContent: t("no image") }));
      const btn = li.querySelector(".tray-assign");
      if (!canAssign) btn.remove();
      else btn.addEventListener("click", () => assignCapture({ uid: li.dataset.uid, from: li.dataset.from,
        label: li.dataset.label, hasThumbnail: !!li.querySelector("img"), onDone: () => {} }));
    }
    const frames = c.frames === 1 ? t("1 frame") : t("{n} frames", { n: c.frames });
    const meta = `${fmtTime(c.received_at)} · ${probeText(c.probe)} · ${frames}`;
    li.dataset.from = p.id;
    li.dataset.label = t("Unassigned capture, {meta}", { meta });
    li.querySelector(".tray-view").href = "/patients/" + encodeURIComponent(p.id);
    li.querySelector(".tray-view").setAttribute("aria-label", t("View the capture of {when}", { when: fmtTime(c.received_at) }));
    li.querySelector(".t-meta").textContent = meta;
    const btn = li.querySelector(".tray-assign");
    if (btn) btn.setAttribute("aria-label", t("Assign to patient: capture of {when} from {probe}", { when: fmtTime(c.received_at), probe: probeText(c.probe) }));
    placed.push(li);
  });
  placeChildren(list, placed);
}

// `items` as the children of `list`, in order, moved only when the order changed: an item
// that stays where it was is never detached, so a tap that lands while a live update
// redraws the board still reaches it (a detached button gets no click).
function placeChildren(list, items) {
  const now = list.children;
  if (now.length === items.length && items.every((el, i) => now[i] === el)) return;
  list.replaceChildren(...items);
}

function render() {
  renderTray();
  const list = document.getElementById("board");
  const tpl = document.getElementById("card-template");
  const sort = document.getElementById("board-sort").value;
  Object.entries(state.counts || {}).forEach(([cat, n]) => {
    const c = document.querySelector(`[data-count="${cat}"]`);
    if (c) c.textContent = String(n);
  });
  // the kit filtered and ordered them; filtered here again so typing narrows the loaded cards
  // at once, before the kit's answer comes; other sorts order what is loaded
  const rows = state.patients.filter(inView);
  if (sort === "recent") rows.sort((a, b) => Math.max(b.updated, b.last_capture) - Math.max(a.updated, a.last_capture));
  else if (sort === "tag") rows.sort((a, b) => String(a.tag || a.id).localeCompare(String(b.tag || b.id), undefined, { numeric: true }));
  const shown = new Map();
  list.querySelectorAll(":scope > li").forEach((li) => shown.set(li.dataset.patientId, li));
  placeChildren(list, rows.map((p) => {
    const li = shown.get(p.id) || tpl.content.firstElementChild.cloneNode(true);
    fillCard(li, p);
    return li;
  }));
  document.getElementById("board-empty").hidden = Object.values(state.counts || {}).some((n) => n > 0);
  const more = document.getElementById("board-more");
  const left = state.next ? moreAfter() : 0;
  more.hidden = !left;
  more.textContent = t("Show more ({n} more)", { n: left });
}

let drawing = null;
function redrawSoon() { // a burst of rows (a cine push, a sync batch) is drawn once
  if (!drawing) drawing = requestAnimationFrame(() => { drawing = null; render(); });
}

// A patient's new card from the live stream, or their removal (row null: merged away), with
// the whole board's counts after it. A card is shown when it falls inside the loaded window
// (up to where the last page loaded ended, or everything is loaded); beyond it, only
// "N more" changes (the next page brings it).
function patch(data) {
  const { id, row } = data;
  if (data.counts) Object.assign(state, { counts: data.counts, total: data.total, unassigned: data.unassigned });
  const was = state.patients.findIndex((p) => p.id === id);
  if (was >= 0) state.patients.splice(was, 1);
  const held = state.holders.findIndex((p) => p.id === id);
  if (held >= 0) state.holders.splice(held, 1);
  if (row && row.unassigned) state.holders.push(row);
  else if (row && inView(row) && (!state.next || before(row, state.edge) <= 0)) {
    const at = state.patients.findIndex((p) => before(row, p) < 0);
    state.patients.splice(at < 0 ? state.patients.length : at, 0, row);
  }
  redrawSoon();
}

// The view asked (category filter, search); `after` a page's cursor, `limit` cards at most
function boardUrl(after, limit) {
  const q = new URLSearchParams();
  if (filter) q.set("triage", filter);
  if (searchText()) q.set("q", searchText());
  if (after) q.set("after", after);
  if (limit) q.set("limit", String(limit));
  return "/api/v1/ui/board" + (q.toString() ? "?" + q : "");
}
const MAX_RELOAD = 1000; // the kit's most cards per page: what a reload keeps of the loaded pages

// The next page after the loaded cards ("Show more"). If the first page was loaded again
// meanwhile (the live stream reconnected), the page is asked again after the new cursor
// rather than dropped; if the view changed (filter, search), it is dropped.
let loadingMore = null;
async function showMore() {
  if (loadingMore || !state.next) return;
  loadingMore = (async () => {
    try {
      for (let tries = 0; tries < 3; tries++) {
        const { view, next } = state;
        const data = await api(boardUrl(next));
        if (data.__stale || state.view !== view) return; // offline, or another view meanwhile
        if (state.next !== next) { // reloaded meanwhile: ask after where it now ends
          if (!state.next) return;
          continue;
        }
        const shown = new Set(state.patients.map((p) => p.id));
        state.patients.push(...data.patients.filter((p) => !p.unassigned && !shown.has(p.id)));
        Object.assign(state, { counts: data.counts, total: data.total, unassigned: data.unassigned,
          more: data.more, next: data.next, pages: state.pages + 1, edge: data.patients.filter((p) => !p.unassigned).pop() || state.edge });
        showError("");
        render();
        return;
      }
    } catch (e) {
      if (e.status !== 401) showError(e.message);
    } finally { loadingMore = null; }
  })();
}

// The first page of the view asked (category filter, search); a newer view asked while it
// loads wins
let inflightUrl = null;
async function refresh() {
  const view = boardUrl(null);
  // the same view loaded again (the stream reconnected) keeps as many cards as were loaded
  const loaded = state.view === view && state.pages > 1 ? state.patients.length : 0;
  const url = loaded > 0 ? boardUrl(null, Math.min(loaded, MAX_RELOAD)) : view;
  if (inflight && inflightUrl === url) return inflight;
  inflightUrl = url;
  const pagesBefore = state.view === view ? state.pages || 0 : 0;
  const mine = inflight = (async () => {
    try {
      let data = await api(url);
      if (inflightUrl !== url) return data;
      // "Show more" added a page while this one loaded: ask again for every card now shown,
      // rather than take the tablet back to fewer cards than it just showed
      if (!data.__stale && state.view === view && (state.pages || 0) > Math.max(pagesBefore, 1)) return refresh();
      if (data.__stale) data = await withPending(data); // with the changes this tablet keeps to send
      const cards = data.patients.filter((p) => !p.unassigned);
      state = { ...data, view, pages: loaded ? state.pages : 1, patients: cards, holders: data.patients.filter((p) => p.unassigned), edge: cards[cards.length - 1] };
      if (!data.__stale && data.at) skewMs = data.at * 1000 - Date.now();
      if (data.__stale) {
        const when = typeof data.__stale === "number" ? fmtTime(data.__stale) : t("earlier");
        showStale(t("Stale: the kit cannot be reached. This is the board as last seen at {when}.", { when }));
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
    } finally { if (inflight === mine) inflight = null; }
  })();
  return mine;
}

document.querySelectorAll(".count").forEach((b) => b.addEventListener("click", () => {
  filter = filter === b.dataset.filter ? null : b.dataset.filter;
  document.querySelectorAll(".count").forEach((o) => o.setAttribute("aria-pressed", String(o.dataset.filter === filter)));
  render(); // the loaded cards of that category at once, then the kit's first page of it
  refresh();
}));
let typing = null;
document.getElementById("board-search").addEventListener("input", () => { // the kit searches, once typing pauses
  clearTimeout(typing);
  render();
  typing = setTimeout(() => refresh(), 300);
});
document.getElementById("board-more").addEventListener("click", showMore);
document.getElementById("board-sort").addEventListener("change", render);

// Disk space: a banner when the kit's disk runs low (what to do) or captures are refused.
async function diskBanner() {
  const box = document.getElementById("disk-banner");
  try {
    const disk = (await api("/api/v1/status")).disk;
    box.hidden = !disk || disk.level === "ok";
    box.dataset.level = (disk && disk.level) || "";
    box.textContent = (disk && disk.message) ? t("Storage: {message}.", { message: disk.message }) : "";
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
  live((topic, data) => { if (topic === "board.row") patch(data); },
    () => refresh(), [], { board: true, since: data && !data.__stale ? data.live_id : "" });
});
initPage(() => refresh());
