// Patient page: captures (thumbnails in time order), the cine player with the AI overlay,
// findings with accept/reject and a note, lung zones, details, notes, merge, re-triage.
// Everything the kit sends is put in the page with textContent.
import { api, el, fmtTime, initPage, live, showError, TRIAGE_LABEL } from "./common.js";

const root = document.getElementById("patient");
const pid = root.dataset.patientId;
let current = null; // the patient JSON
let selected = null; // uid of the capture in the player
const ZONES = ["R1", "R2", "R3", "R4", "L1", "L2", "L3", "L4"];
const noteDrafts = {}; // finding id -> note being typed (survives re-renders from live updates)

// ----------------------------------------------------------------------------- rendering
function renderHead(p) {
  const pill = document.getElementById("p-cat");
  pill.className = `cat-pill tri-${p.triage}`;
  pill.textContent = TRIAGE_LABEL[p.triage] || p.triage;
  document.getElementById("p-title").textContent = p.name ? p.name : (p.tag ? `Tag ${p.tag}` : p.id);
  const bits = [`ID ${p.id}`];
  if (p.tag) bits.push(`tag ${p.tag}`);
  if (p.age !== null && p.age !== undefined) bits.push(`${p.age} y`);
  if (p.sex) bits.push(p.sex);
  document.getElementById("p-sub").textContent = bits.join(" · ");
  document.title = `${p.tag ? "Tag " + p.tag : p.id} · fieldkit`;
  document.querySelectorAll(".tri-btn").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.triage === p.triage)));
}

function renderThumbs(p) {
  const list = document.getElementById("thumbs");
  const tpl = document.getElementById("thumb-template");
  document.getElementById("no-captures").hidden = p.captures.length > 0;
  const frag = document.createDocumentFragment();
  p.captures.forEach((c, i) => {
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.dataset.uid = c.uid;
    const btn = li.querySelector("button");
    const img = li.querySelector("img");
    if (c.decode_error || !c.has_thumbnail) {
      const ph = el("span", "failed", `Cannot show this capture: ${c.decode_error || "no image"}`);
      img.replaceWith(ph);
      li.dataset.failed = "1";
    } else {
      img.src = `/api/v1/ui/instances/${encodeURIComponent(c.uid)}/thumbnail.jpg`;
      img.alt = `Capture ${i + 1}`;
    }
    const zone = c.zone ? ` · zone ${c.zone}` : "";
    li.querySelector(".t-meta").textContent = `#${i + 1} ${fmtTime(c.received_at)} · ${c.frames} frame${c.frames === 1 ? "" : "s"}${zone}`;
    li.querySelector(".t-sync").textContent = c.sync === "confirmed" ? "at hospital" : (c.sync === "quarantined" ? "refused by hospital" : c.sync);
    btn.setAttribute("aria-current", String(c.uid === selected));
    btn.addEventListener("click", () => openCapture(c));
    frag.appendChild(li);
  });
  list.replaceChildren(frag);
}

function findingText(f) {
  if (!f.assessable) return `Not assessable: ${f.reason || "no reason given"}`;
  const r = f.result || {};
  if (f.task === "lung") return `${r.pattern || "lung"} — up to ${r.max_b_lines} B-line${r.max_b_lines === 1 ? "" : "s"} in a frame`;
  if (f.task === "fast") {
    const area = r.fluid_area_cm2 ? `, largest area ${r.fluid_area_cm2} cm²` : "";
    return r.fluid_present ? `Free fluid seen in ${r.frames_with_fluid} frame(s)${area}` : "No free fluid seen";
  }
  return JSON.stringify(r).slice(0, 200);
}

function renderFindings(p) {
  const list = document.getElementById("findings");
  const tpl = document.getElementById("finding-template");
  const frag = document.createDocumentFragment();
  let n = 0;
  p.captures.forEach((c, i) => c.findings.forEach((f) => {
    n += 1;
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.dataset.findingId = f.id;
    li.dataset.task = f.task;
    li.querySelector(".f-task").textContent = `${f.task === "lung" ? "Lung" : f.task === "fast" ? "FAST" : f.task} (capture #${i + 1})`;
    li.querySelector(".f-result").textContent = findingText(f);
    const conf = f.assessable ? `confidence ${(100 * (f.confidence || 0)).toFixed(0)}% · ` : "";
    li.querySelector(".f-meta").textContent = `${conf}model ${f.model} v${f.model_version} · ${f.frames_analysed}/${f.frames_total} frames analysed`;
    const review = f.review || null;
    const acc = li.querySelector(".f-accept");
    const rej = li.querySelector(".f-reject");
    const note = li.querySelector(".f-note");
    const noteId = `note-${f.id}`;
    note.id = noteId;
    li.querySelector("label").setAttribute("for", noteId);
    acc.setAttribute("aria-pressed", String(!!review && review.decision === "accepted"));
    rej.setAttribute("aria-pressed", String(!!review && review.decision === "rejected"));
    note.value = f.id in noteDrafts ? noteDrafts[f.id] : ((review && review.note) || "");
    note.addEventListener("input", () => { noteDrafts[f.id] = note.value; });
    if (review) {
      li.querySelector(".f-state").textContent = `${review.decision} by ${review.by || "?"} at ${fmtTime(review.at)}${review.note ? " — " + review.note : ""}`;
    }
    const send = async (decision) => {
      try {
        await api(`/api/v1/ui/findings/${encodeURIComponent(f.id)}/review`, { method: "POST", body: { decision, note: note.value } });
        delete noteDrafts[f.id];
        await load();
      } catch (e) { if (e.status !== 401) showError(e.message); }
    };
    if (!canReview) li.querySelector(".f-review").hidden = true;
    acc.addEventListener("click", () => send("accepted"));
    rej.addEventListener("click", () => send("rejected"));
    frag.appendChild(li);
  }));
  list.replaceChildren(frag);
  document.getElementById("no-findings").hidden = n > 0;
  renderZones(p);
}

function renderZones(p) {
  const counts = {};
  p.captures.forEach((c) => {
    if (!c.zone) return;
    c.findings.filter((f) => f.task === "lung" && f.assessable).forEach((f) => {
      counts[c.zone] = Math.max(counts[c.zone] || 0, (f.result || {}).max_b_lines || 0);
    });
  });
  const anyLung = p.captures.some((c) => c.findings.some((f) => f.task === "lung"));
  document.getElementById("zones-wrap").hidden = !anyLung;
  const grid = document.getElementById("zones");
  const frag = document.createDocumentFragment();
  ["R1", "R2", "L1", "L2", "R3", "R4", "L3", "L4"].forEach((z) => {
    const d = el("div", "zone");
    d.setAttribute("role", "listitem");
    d.dataset.zone = z;
    d.appendChild(el("span", "zn", z));
    d.appendChild(el("span", "zc", z in counts ? String(counts[z]) : "–"));
    if ((counts[z] || 0) >= 3) d.classList.add("hot");
    frag.appendChild(d);
  });
  grid.replaceChildren(frag);
}

const canReview = root.dataset.canReview === "yes";
const canEdit = root.dataset.canEdit === "yes";

function renderDetails(p) {
  const form = document.getElementById("details");
  if (form && !form.dataset.touched) {
    document.getElementById("d-name").value = p.name || "";
    document.getElementById("d-age").value = p.age === null || p.age === undefined ? "" : String(p.age);
    document.getElementById("d-sex").value = p.sex || "";
  }
  const notes = document.getElementById("notes");
  notes.replaceChildren(...(p.notes || []).map((n) => el("li", "", `${fmtTime(n.at)} ${n.by || ""}: ${n.text}`)));
  const hist = document.getElementById("history");
  hist.replaceChildren(...(p.triage_history || []).map((h) => el("li", `h-${h.triage}`,
    `${fmtTime(h.at)} ${TRIAGE_LABEL[h.triage] || h.triage}${h.by ? " by " + h.by : ""}${h.proposed ? " (START proposed " + (TRIAGE_LABEL[h.proposed] || h.proposed) + ")" : ""}`)));
  if (!canEdit || p.name) document.getElementById("merge-wrap").hidden = true;
  else if (!mergeTargetsAsked) loadMergeTargets();
}

// Who an unidentified patient can be merged into: asked once per page load, not with every
// refresh of the patient (the list spans all patients; the patient's own JSON does not).
let mergeTargetsAsked = false;
async function loadMergeTargets() {
  mergeTargetsAsked = true;
  try {
    const { targets } = await api(`/api/v1/ui/patients/${encodeURIComponent(pid)}/merge-targets`);
    const sel = document.getElementById("merge-into");
    const chosen = sel.value;
    sel.replaceChildren(...targets.map((o) => {
      const opt = el("option", "", `${o.name}${o.tag ? " (tag " + o.tag + ")" : ""} — ${o.id}`);
      opt.value = o.id;
      return opt;
    }));
    if (targets.some((o) => o.id === chosen)) sel.value = chosen;
    document.getElementById("merge-wrap").hidden = !targets.length || !!(current && current.name);
  } catch (e) { if (e.status !== 401) showError(e.message); }
}

function renderZoneSelect(c) {
  let wrap = document.getElementById("zone-select");
  if (!wrap) return;
  wrap.value = c.zone || "";
}

async function load() {
  try {
    const p = await api(`/api/v1/ui/patients/${encodeURIComponent(pid)}`);
    if (p.id !== pid && p.id) { location.replace("/patients/" + encodeURIComponent(p.id)); return; }
    current = p;
    renderHead(p);
    renderThumbs(p);
    renderFindings(p);
    renderDetails(p);
    const sel = p.captures.find((c) => c.uid === selected);
    if (sel) { renderZoneSelect(sel); player.setFindings(sel); }
    showError("");
  } catch (e) {
    if (e.status !== 401) showError(e.message);
  }
}

// ----------------------------------------------------------------------------- cine player
const player = (() => {
  const canvas = document.getElementById("cine");
  const ctx = canvas.getContext("2d");
  const layer = document.getElementById("overlay-layer");
  const lctx = layer.getContext("2d");
  const playBtn = document.getElementById("play");
  const scrub = document.getElementById("scrub");
  const frameNo = document.getElementById("frame-no");
  const ovBtn = document.getElementById("overlay-toggle");
  const errBox = document.getElementById("player-error");
  let meta = null, sprite = null, frame = 0, playing = false, last = 0, acc = 0, overlayImg = null, overlayOn = false;
  let token = 0;

  function draw() {
    if (!meta || !sprite) return;
    const sx = (frame % meta.cols) * meta.tile_w, sy = Math.floor(frame / meta.cols) * meta.tile_h;
    ctx.drawImage(sprite, sx, sy, meta.tile_w, meta.tile_h, 0, 0, canvas.width, canvas.height);
    lctx.clearRect(0, 0, layer.width, layer.height);
    if (overlayOn && overlayImg) lctx.drawImage(overlayImg, 0, 0, layer.width, layer.height);
    scrub.value = String(frame);
    frameNo.textContent = `${frame + 1} / ${meta.frames}`;
    canvas.dataset.frame = String(frame);
  }
  function tick(t) {
    if (!playing) return;
    if (last) acc += t - last;
    last = t;
    const step = meta.frame_time_ms;
    if (acc >= step) {
      const n = Math.floor(acc / step);
      acc -= n * step;
      frame = (frame + n) % meta.frames;
      draw();
    }
    requestAnimationFrame(tick);
  }
  function setPlaying(on) {
    playing = on && meta && meta.frames > 1;
    playBtn.textContent = playing ? "Pause" : "Play";
    playBtn.setAttribute("aria-label", playing ? "Pause" : "Play");
    canvas.dataset.playing = String(playing);
    if (playing) { last = 0; acc = 0; requestAnimationFrame(tick); }
  }
  playBtn.addEventListener("click", () => setPlaying(!playing));
  document.getElementById("step-back").addEventListener("click", () => { if (!meta) return; setPlaying(false); frame = (frame - 1 + meta.frames) % meta.frames; draw(); });
  document.getElementById("step-fwd").addEventListener("click", () => { if (!meta) return; setPlaying(false); frame = (frame + 1) % meta.frames; draw(); });
  scrub.addEventListener("input", () => { if (!meta) return; setPlaying(false); frame = Number(scrub.value) || 0; draw(); });
  ovBtn.addEventListener("click", () => {
    overlayOn = !overlayOn;
    ovBtn.setAttribute("aria-pressed", String(overlayOn));
    ovBtn.textContent = `AI overlay: ${overlayOn ? "on" : "off"}`;
    layer.dataset.on = String(overlayOn);
    draw();
  });

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("image did not load"));
      img.src = src;
    });
  }

  async function setFindings(c) {
    const f = c.findings.find((x) => x.has_overlay && x.assessable);
    const myToken = token;
    if (!f) { overlayImg = null; ovBtn.disabled = true; layer.dataset.ready = "false"; draw(); return; }
    if (layer.dataset.finding === f.id && overlayImg) return;
    try {
      const img = await loadImage(`/api/v1/ui/findings/${encodeURIComponent(f.id)}/overlay.png`);
      if (myToken !== token) return;
      overlayImg = img;
      layer.dataset.finding = f.id;
      layer.dataset.ready = "true";
      ovBtn.disabled = false;
      draw();
    } catch (e) { ovBtn.disabled = true; }
  }

  async function open(c) {
    token += 1;
    const myToken = token;
    setPlaying(false);
    document.getElementById("player-section").hidden = false;
    errBox.hidden = true;
    canvas.hidden = false;
    meta = null; sprite = null; overlayImg = null; frame = 0;
    layer.dataset.finding = ""; layer.dataset.ready = "false"; canvas.dataset.ready = "false";
    ovBtn.disabled = true;
    try {
      const m = await api(`/api/v1/ui/instances/${encodeURIComponent(c.uid)}/cine`);
      const img = await loadImage(`/api/v1/ui/instances/${encodeURIComponent(c.uid)}/sprite.jpg`);
      if (myToken !== token) return;
      meta = m; sprite = img;
      canvas.width = layer.width = m.tile_w;
      canvas.height = layer.height = m.tile_h;
      scrub.max = String(m.frames - 1);
      canvas.dataset.ready = "true";
      canvas.dataset.frames = String(m.frames);
      draw();
      setFindings(c);
    } catch (e) {
      if (myToken !== token) return;
      canvas.hidden = true;
      errBox.textContent = `This capture cannot be played: ${e.message}`;
      errBox.hidden = false;
    }
  }
  return { open, setFindings };
})();

function openCapture(c) {
  selected = c.uid;
  document.querySelectorAll(".thumb-btn").forEach((b) => b.setAttribute("aria-current", String(b.closest("li").dataset.uid === c.uid)));
  ensureZoneSelect(c);
  player.open(c);
}

function ensureZoneSelect(c) {
  if (!canEdit) return;
  let sel = document.getElementById("zone-select");
  if (!sel) {
    const wrap = el("div", "field");
    const label = el("label", "", "Lung zone of this capture");
    label.setAttribute("for", "zone-select");
    sel = document.createElement("select");
    sel.id = "zone-select";
    sel.appendChild(Object.assign(el("option", "", "–"), { value: "" }));
    ZONES.forEach((z) => sel.appendChild(Object.assign(el("option", "", z), { value: z })));
    sel.addEventListener("change", async () => {
      try {
        await api(`/api/v1/ui/instances/${encodeURIComponent(selected)}/zone`, { method: "POST", body: { zone: sel.value } });
        await load();
      } catch (e) { if (e.status !== 401) showError(e.message); }
    });
    wrap.append(label, sel);
    document.querySelector(".player").appendChild(wrap);
  }
  sel.value = c.zone || "";
}

// ----------------------------------------------------------------------------- actions
document.querySelectorAll(".tri-btn").forEach((b) => b.addEventListener("click", async () => {
  try {
    await api(`/api/v1/ui/patients/${encodeURIComponent(pid)}/triage`, { method: "POST", body: { triage: b.dataset.triage } });
    await load();
  } catch (e) { if (e.status !== 401) showError(e.message); }
}));

const details = document.getElementById("details"); // absent for roles that may not edit
if (details) details.addEventListener("input", () => { details.dataset.touched = "1"; });
if (details) details.addEventListener("change", () => { details.dataset.touched = "1"; }); // also a restored draft
if (details) details.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const box = document.getElementById("details-error");
  box.hidden = true;
  const body = { name: document.getElementById("d-name").value, age: document.getElementById("d-age").value,
    sex: document.getElementById("d-sex").value, note: document.getElementById("d-note").value };
  try {
    await api(`/api/v1/ui/patients/${encodeURIComponent(pid)}/details`, { method: "POST", body });
    document.getElementById("d-note").value = "";
    delete details.dataset.touched;
    await load();
  } catch (e) {
    if (e.status !== 401) { box.textContent = e.message; box.hidden = false; }
  }
});

document.getElementById("merge").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const into = document.getElementById("merge-into").value;
  if (!into) return;
  try {
    const out = await api(`/api/v1/ui/patients/${encodeURIComponent(pid)}/merge`, { method: "POST", body: { into } });
    location.assign("/patients/" + encodeURIComponent(out.patient.id));
  } catch (e) { if (e.status !== 401) showError(e.message); }
});

// ----------------------------------------------------------------------------- live
let pending = null;
function soon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; load(); }, 200);
}
live((topic, data) => {
  if (topic === "power.policy") return;
  if (!data.patient_id || data.patient_id === pid || (current && data.patient_id === current.id) || topic.startsWith("sync.")) soon();
}, () => soon());

load();
initPage();
