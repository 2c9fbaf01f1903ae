// The triage board: a card per patient, coloured by category, counts on top, sort and
// filter, kept current by the live stream. Works from the service worker's copy when the
// kit is unreachable (marked stale).
import { api, el, fmtTime, initPage, live, showError, showStale, clearStale, TRIAGE_LABEL } from "./common.js";

const ORDER = { red: 0, yellow: 1, green: 2, grey: 3, black: 4, none: 5 };
const SYNC_LABEL = { none: "no captures", queued: "to send", sending: "sending", confirmed: "at hospital",
  quarantined: "refused — see Sync" };
let state = { patients: [], counts: {} };
let filter = null;
let inflight = null;

function render() {
  const list = document.getElementById("board");
  const tpl = document.getElementById("card-template");
  const q = document.getElementById("board-search").value.trim().toLowerCase();
  const sort = document.getElementById("board-sort").value;
  Object.entries(state.counts || {}).forEach(([cat, n]) => {
    const c = document.querySelector(`[data-count="${cat}"]`);
    if (c) c.textContent = String(n);
  });
  let rows = state.patients.filter((p) => (!filter || p.triage === filter) &&
    (!q || [p.id, p.tag, p.name].some((v) => (v || "").toLowerCase().includes(q))));
  if (sort === "recent") rows.sort((a, b) => Math.max(b.updated, b.last_capture) - Math.max(a.updated, a.last_capture));
  else if (sort === "tag") rows.sort((a, b) => String(a.tag || a.id).localeCompare(String(b.tag || b.id), undefined, { numeric: true }));
  else rows.sort((a, b) => (ORDER[a.triage] - ORDER[b.triage]) || (b.updated - a.updated));
  const frag = document.createDocumentFragment();
  rows.forEach((p) => {
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.classList.add(`tri-${p.triage}`);
    li.dataset.patientId = p.id;
    li.dataset.triage = p.triage;
    const a = li.querySelector("a");
    a.href = "/patients/" + encodeURIComponent(p.id);
    li.querySelector(".cat-label").textContent = TRIAGE_LABEL[p.triage] || p.triage;
    li.querySelector(".pid").textContent = p.tag ? `Tag ${p.tag}` : p.id;
    li.querySelector(".pname").textContent = p.name || (p.age ? `${p.age} y` : "Unidentified");
    li.querySelector(".caps").textContent = `${p.captures} capture${p.captures === 1 ? "" : "s"}`;
    li.querySelector(".fnd").textContent = p.findings ? `· ${p.findings} finding${p.findings === 1 ? "" : "s"}` : "";
    const badge = li.querySelector(".sync-badge");
    badge.textContent = SYNC_LABEL[p.sync] || p.sync;
    badge.dataset.sync = p.sync;
    frag.appendChild(li);
  });
  list.replaceChildren(frag);
  document.getElementById("board-empty").hidden = state.patients.length > 0;
}

async function refresh() {
  if (inflight) return inflight;
  inflight = (async () => {
    try {
      const data = await api("/api/v1/ui/board");
      state = data;
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
    } catch (e) {
      if (e.status !== 401) showError(e.message);
    } finally { inflight = null; }
  })();
  return inflight;
}

let pending = null;
function soon() { // coalesce bursts of events (a cine push, a sync batch) into one fetch
  if (pending) return;
  pending = setTimeout(() => { pending = null; refresh(); }, 250);
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

refresh();
diskBanner();
setInterval(diskBanner, 30000);
live(() => soon(), () => soon());
initPage(() => refresh());
