// Patient page: captures (thumbnails in time order), the cine player with the AI overlay,
// findings with accept/reject and a note, lung zones, details, notes, re-triage; scanning
// with a probe (probe sessions), moving a capture to another patient, and merging another
// record in (only from the "More actions" menu, confirmed, undoable).
// Everything the kit sends is put in the page with textContent.
import { api, el, fmtTime, initPage, live, showError, t, TRIAGE_LABEL } from "./common.js";
import { assignCapture, fillPill, findPatient, offerUndo, shownName, who } from "./actions.js";
import { initCarePanel, renderPlace } from "./care.js";

// where a capture is on its way to the hospital (records.py sync states)
const CAPTURE_SYNC = { queued: t("to send"), sending: t("sending"), confirmed: t("at hospital"),
  quarantined: t("refused by hospital") };

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
  document.querySelector(".p-head").className = `p-head band tri-${p.triage}`; // the band in the category's colour
  pill.textContent = TRIAGE_LABEL[p.triage] || p.triage;
  document.getElementById("p-title").textContent = p.unassigned ? t("Unassigned captures ({id})", { id: p.id })
    : (p.display_name && !p.name_from_probe ? p.display_name : who(p));
  const bits = [t("ID {id}", { id: p.id })];
  (p.tags || (p.tag ? [p.tag] : [])).forEach((tag) => bits.push(t("tag {tag}", { tag })));
  if (p.age !== null && p.age !== undefined) bits.push(t("{n} y", { n: p.age }));
  if (p.sex) bits.push(p.sex);
  document.getElementById("p-sub").textContent = bits.join(" · ");
  document.title = `${who(p)} · fieldkit`;
  document.querySelectorAll(".tri-btn").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.triage === p.triage)));
  document.getElementById("p-probe-name").hidden = !p.name_from_probe;
  document.getElementById("p-probe-name-text").textContent = p.name_from_probe ? t("{name}: not confirmed by a clinician", { name: shownName(p) }) : "";
}

const LINKED = { "worklist": t("linked by worklist"), "probe session": t("linked by probe session"),
  "assigned": t("assigned by hand"), "tag": t("linked by tag number"), "patient id": t("linked by patient ID"),
  "study": t("linked by its study"), "probe's patient id": t("linked by the probe's patient ID"),
  "new patient": t("no patient found") };

function linkedText(c) {
  const why = LINKED[c.linked_by] || (c.linked_by ? t("linked by {how}", { how: c.linked_by }) : "");
  return c.probe ? why + (why ? " · " : "") + t("probe {probe}", { probe: c.probe }) : why;
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
      const noImage = t("no image");
      const ph = el("span", "failed", t("Cannot show this capture: {reason}", { reason: c.decode_error || noImage }));
      img.replaceWith(ph);
      li.dataset.failed = "1";
    } else {
      img.src = `/api/v1/ui/instances/${encodeURIComponent(c.uid)}/thumbnail.jpg`;
      img.alt = t("Capture {n}", { n: i + 1 });
    }
    const zone = c.zone ? " · " + t("zone {zone}", { zone: c.zone }) : "";
    const frames = c.frames === 1 ? t("1 frame") : t("{n} frames", { n: c.frames });
    li.querySelector(".t-meta").textContent = `#${i + 1} ${fmtTime(c.received_at)} · ${frames}${zone}`;
    li.querySelector(".t-sync").textContent = CAPTURE_SYNC[c.sync] || c.sync;
    li.querySelector(".t-linked").textContent = linkedText(c);
    btn.setAttribute("aria-current", String(c.uid === selected));
    btn.addEventListener("click", () => openCapture(c));
    if (canTriage) { // re-assigning is always possible, from the capture itself
      const move = el("button", "btn move", p.unassigned ? t("Assign to patient") : t("Move to another patient"));
      move.type = "button";
      move.setAttribute("aria-label", t("{action}: capture {n}", { action: move.textContent, n: i + 1 }));
      move.addEventListener("click", () => assignCapture({ uid: c.uid, from: p.id, hasThumbnail: !!c.has_thumbnail,
        label: t("Capture {n} of {who}, {when}", { n: i + 1, who: who(p), when: fmtTime(c.received_at) }), onDone: () => load() }));
      li.appendChild(move);
    }
    frag.appendChild(li);
  });
  list.replaceChildren(frag);
}

const TASK_NAME = { lung: t("lung"), fast: "FAST" };
const TASK_TITLE = { lung: t("Lung"), fast: "FAST" };
const DECISION = { accepted: t("accepted"), rejected: t("rejected"), acknowledged: t("acknowledged"),
  pending: t("pending") };
const PATTERN = { "B-line pattern": t("B-line pattern"), "A-line pattern": t("A-line pattern") };

function findingText(f) {
  // an abstention in plain words; the model's own reason is behind "Why no assessment"
  if (!f.assessable) return t("No assessment: image not usable for {task}", { task: TASK_NAME[f.task] || f.task });
  const r = f.result || {};
  if (f.task === "lung") {
    const lines = (n) => (n === 1 ? t("1 B-line") : t("{n} B-lines", { n }));
    // the clip's count is that of its summary frame (rows stored before it give the maximum)
    const count = r.summary_frame
      ? t("{lines} (frame {frame}), up to {max} in a frame", { lines: lines(r.b_lines), frame: r.summary_frame, max: r.max_b_lines })
      : t("up to {lines} in a frame", { lines: lines(r.max_b_lines) });
    const mimics = r.max_vertical_artefacts_not_b_lines ? " · " + t("vertical artefacts present, not B-lines") : "";
    const confluent = r.confluent ? " · " + t("confluent B-lines (merged over a wide sector)") : "";
    return `${PATTERN[r.pattern] || r.pattern || t("lung")} — ${count}${confluent}${mimics}`;
  }
  if (f.task === "fast") {
    const area = r.fluid_area_cm2 ? ", " + t("largest area {area} cm²", { area: r.fluid_area_cm2 }) : "";
    return r.fluid_present ? t("Free fluid seen in {n} frame(s)", { n: r.frames_with_fluid }) + area : t("No free fluid seen");
  }
  return JSON.stringify(r).slice(0, 200);
}

// lung sliding (the pneumothorax sign): absent is a red flag the clinician must see, and
// never reads as a diagnosis; an abstention says why in words
const SLIDING_WHY = { single_frame: t("a single image: sliding needs a clip"),
  too_few_frames: t("too few lung frames in the clip"), no_pleura: t("no clear pleural line found"),
  probe_moved: t("the probe moved during the clip"), uncertain: t("too little movement to tell") };

function slidingText(s) {
  if (s.status === "present") return t("Lung sliding: present");
  if (s.status === "absent") return t("Lung sliding: absent (pneumothorax not excluded)");
  if (s.reason_code === "partial") return t("Lung sliding: in part of the view only (pneumothorax not excluded)");
  return t("Lung sliding: not assessable ({why})", { why: SLIDING_WHY[s.reason_code] || s.reason || "?" });
}

function renderSliding(li, f) {
  const box = li.querySelector(".f-sliding");
  const s = f.task === "lung" && f.assessable && f.result ? f.result.sliding : null;
  box.hidden = !s;
  if (!s) return;
  // no sliding, or sliding on one side of a line only (a lung point): a red flag
  const flag = s.status === "absent" || s.reason_code === "partial";
  box.dataset.status = s.status;
  box.dataset.flag = String(flag);
  box.textContent = (flag ? "▲ " : "") + slidingText(s);
}

// the M-mode strip under the words, for the clinician to check the call: made by the kit
// from the stored cine where the pleura shows (none for a single frame or no pleural line)
function renderMMode(li, f, c) {
  const fig = li.querySelector(".f-mmode");
  const s = f.task === "lung" && f.assessable && f.result ? f.result.sliding : null;
  fig.hidden = !(s && s.m_mode && c.frames > 1 && !c.purged);
  if (fig.hidden) return;
  fig.dataset.sides = String(s.m_mode.columns.length);
  fig.querySelector("img").src = `/api/v1/ui/findings/${encodeURIComponent(f.id)}/mmode.png`;
  fig.querySelector("figcaption").textContent = t("M-mode through the pleural line, time →: seashore = sliding, barcode = no sliding")
    + (s.m_mode.columns.length > 1 ? " " + t("Left strip: left side of the view; right strip: right side.") : "");
}

function renderFindings(p) {
  const list = document.getElementById("findings");
  const tpl = document.getElementById("finding-template");
  const frag = document.createDocumentFragment();
  // a reason opened by the reader stays open when the page is drawn again (a live update)
  const opened = new Set([...list.querySelectorAll("details.f-why[open]")].map((d) => d.closest("li").dataset.findingId));
  let n = 0;
  p.captures.forEach((c, i) => c.findings.forEach((f) => {
    n += 1;
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.dataset.findingId = f.id;
    li.dataset.task = f.task;
    li.querySelector(".f-task").textContent = t("{task} (capture #{n})",
      { task: TASK_TITLE[f.task] || f.task, n: i + 1 });
    li.querySelector(".f-result").textContent = findingText(f);
    renderSliding(li, f);
    renderMMode(li, f, c);
    // two figures, each named: the gate's probability of the view, and the calibrated
    // probability of the finding itself (what it is the probability of, from the model)
    const of = (f.result && f.result.finding_probability_of) || "";
    const finding = f.finding_probability == null || !of ? t("finding: no calibrated confidence")
      : t("finding: {of} {pct}%", { of, pct: (100 * f.finding_probability).toFixed(0) });
    const viewName = TASK_NAME[f.task] || f.task;
    const conf = f.assessable ? t("view: {view} {pct}%", { view: viewName, pct: (100 * (f.view_probability || 0)).toFixed(0) })
      + ` · ${finding} · ` : "";
    // a clip the scanner showed inverted (its orientation marker at the bottom) was read set upright
    const upright = f.assessable && f.result && f.result.turned_upright
      ? t("read set upright: its orientation marker shows it inverted") + " · " : "";
    li.querySelector(".f-meta").textContent = conf + upright + t("model {model} v{version} · {done}/{total} frames analysed",
      { model: f.model, version: f.model_version, done: f.frames_analysed, total: f.frames_total });
    const review = f.review || null;
    const acc = li.querySelector(".f-accept");
    const rej = li.querySelector(".f-reject");
    const ack = li.querySelector(".f-ack");
    // nothing to accept or reject where the model gave no assessment: it is acknowledged
    li.dataset.assessable = String(!!f.assessable);
    acc.hidden = rej.hidden = !f.assessable;
    ack.hidden = !!f.assessable;
    li.querySelector(".f-why").hidden = !!f.assessable;
    li.querySelector(".f-why").open = opened.has(f.id);
    li.querySelector(".f-reason").textContent = f.assessable ? "" : (f.reason || t("The model gave no reason."));
    ack.setAttribute("aria-pressed", String(!!review && review.decision === "acknowledged"));
    const note = li.querySelector(".f-note");
    const noteId = `note-${f.id}`;
    note.id = noteId;
    li.querySelector("label").setAttribute("for", noteId);
    acc.setAttribute("aria-pressed", String(!!review && review.decision === "accepted"));
    rej.setAttribute("aria-pressed", String(!!review && review.decision === "rejected"));
    note.value = f.id in noteDrafts ? noteDrafts[f.id] : ((review && review.note) || "");
    note.addEventListener("input", () => { noteDrafts[f.id] = note.value; });
    if (review) {
      li.querySelector(".f-state").textContent = t("{decision} by {who} at {when}",
        { decision: DECISION[review.decision] || review.decision, who: review.by || "?", when: fmtTime(review.at) })
        + (review.note ? " — " + review.note : "");
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
    ack.addEventListener("click", () => send("acknowledged"));
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
const canTriage = root.dataset.canTriage === "yes";
let shownNameValue = null; // the name the details form was filled with: sent only when changed

function renderDetails(p) {
  const form = document.getElementById("details");
  if (form && !form.dataset.touched) {
    shownNameValue = p.display_name || "";
    document.getElementById("d-name").value = shownNameValue;
    document.getElementById("d-age").value = p.age === null || p.age === undefined ? "" : String(p.age);
    document.getElementById("d-sex").value = p.sex || "";
  }
  const notes = document.getElementById("notes");
  notes.replaceChildren(...(p.notes || []).map((n) => el("li", "", `${fmtTime(n.at)} ${n.by || ""}: ${n.text}`)));
  const hist = document.getElementById("history");
  hist.replaceChildren(...(p.triage_history || []).map((h) => el("li", `h-${h.triage}`,
    `${fmtTime(h.at)} ${TRIAGE_LABEL[h.triage] || h.triage}` + (h.undo ? " " + t("(undo)") : "")
    + (h.by ? " " + t("by {who}", { who: h.by }) : "")
    + (h.proposed ? " " + t("(START proposed {category})", { category: TRIAGE_LABEL[h.proposed] || h.proposed }) : ""))));
}

// ----------------------------------------------------------------------------- probe sessions
let probeList = null; // registered probes, asked once per page load

function renderSessions(p) {
  const list = document.getElementById("sessions");
  if (!list) return;
  list.replaceChildren(...(p.probe_sessions || []).map((s) => {
    const probe = s.name ? `${s.name} (${s.probe})` : s.probe;
    const li = el("li", "", t("Probe {probe} is scanning this patient until {when}", { probe, when: fmtTime(s.until) }));
    li.dataset.probe = s.probe;
    const end = el("button", "btn", t("End probe session"));
    end.type = "button";
    end.setAttribute("aria-label", t("End probe session of {probe}", { probe: s.probe }));
    end.addEventListener("click", () => probeCall("DELETE", s.probe));
    li.appendChild(end);
    return li;
  }));
  if (probeList === null) loadProbes();
  // a session ends by itself at its time: look again then, so the page never shows one that ended
  clearTimeout(sessionTimer);
  const ends = (p.probe_sessions || []).map((s) => s.until * 1000 - Date.now());
  if (ends.length) sessionTimer = setTimeout(load, Math.max(1000, Math.min(...ends) + 500));
}
let sessionTimer = null;

async function loadProbes() {
  probeList = [];
  try {
    probeList = (await api("/api/v1/probes")).probes;
  } catch (e) { if (e.status !== 401) showError(e.message); }
  const sel = document.getElementById("probe-pick");
  sel.replaceChildren(...probeList.map((pr) => Object.assign(el("option", "", pr.name ? `${pr.name} (${pr.ae})` : pr.ae), { value: pr.ae })));
  document.getElementById("probe-start").hidden = !probeList.length;
  document.getElementById("no-probes").hidden = probeList.length > 0;
}

async function probeCall(method, probe) {
  const box = document.getElementById("probe-error");
  box.hidden = true;
  try {
    await api(`/api/v1/ui/patients/${encodeURIComponent(pid)}/probe-session`, { method, body: { probe } });
    await load();
  } catch (e) { if (e.status !== 401) { box.textContent = e.message; box.hidden = false; } }
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
    renderPlace(p);
    renderSessions(p);
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
    playBtn.textContent = playing ? t("Pause") : t("Play");
    playBtn.setAttribute("aria-label", playBtn.textContent);
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
    ovBtn.textContent = overlayOn ? t("AI overlay: on") : t("AI overlay: off");
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
      errBox.textContent = t("This capture cannot be played: {reason}", { reason: e.message });
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
    const label = el("label", "", t("Lung zone of this capture"));
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
// Mis-taps: Deceased and Expectant, and taking a patient out of Immediate, need a second
// tap on a button naming the patient; every change can be undone for UNDO_SECONDS.
const UNDO_SECONDS = 10;
const CONFIRMED = new Set(["black", "grey"]);

function askConfirm(p, to) {
  const dlg = document.getElementById("triage-confirm");
  return new Promise((resolve) => {
    const yes = document.getElementById("triage-confirm-yes");
    const no = document.getElementById("triage-confirm-no");
    document.getElementById("triage-confirm-question").textContent =
      t("{who} is {now}. Mark {who} as {to}?", { who: who(p), now: TRIAGE_LABEL[p.triage] || p.triage, to: TRIAGE_LABEL[to] });
    yes.textContent = t("Yes: {who} is {to}", { who: who(p), to: TRIAGE_LABEL[to] });
    const done = (answer) => {
      yes.onclick = no.onclick = dlg.onclose = null;
      if (dlg.open) dlg.close();
      resolve(answer);
    };
    yes.onclick = () => done(true);
    no.onclick = () => done(false);
    dlg.onclose = () => done(false); // Escape
    dlg.showModal();
    no.focus(); // a second stray tap lands on Cancel
  });
}

async function setTriage(triage, expected, undo = false) {
  await api(`/api/v1/ui/patients/${encodeURIComponent(pid)}/triage`, { method: "POST", body: { triage, expected, undo } });
  await load();
}

document.querySelectorAll(".tri-btn").forEach((b) => b.addEventListener("click", async () => {
  if (!current) await load(); // a tap before the page has its data still knows what it changes
  const p = current;
  const to = b.dataset.triage;
  if (!p || p.triage === to) return;
  try {
    if ((CONFIRMED.has(to) || p.triage === "red") && !(await askConfirm(p, to))) return;
    const before = p.triage;
    await setTriage(to, before);
    offerUndo(`${who(p)}: ${TRIAGE_LABEL[before] || before} → ${TRIAGE_LABEL[to]}.`,
      t("Undo: back to {category}", { category: TRIAGE_LABEL[before] || before }),
      () => setTriage(before, to, true), UNDO_SECONDS);
  } catch (e) { if (e.status !== 401) showError(e.message); }
}));

const details = document.getElementById("details"); // absent for roles that may not edit
if (details) details.addEventListener("input", () => { details.dataset.touched = "1"; });
if (details) details.addEventListener("change", () => { details.dataset.touched = "1"; }); // also a restored draft
if (details) details.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const box = document.getElementById("details-error");
  box.hidden = true;
  const body = { age: document.getElementById("d-age").value,
    sex: document.getElementById("d-sex").value, note: document.getElementById("d-note").value };
  const typed = document.getElementById("d-name").value;
  if (typed.trim() !== (shownNameValue || "")) body.name = typed; // a name someone typed, not the one shown
  try {
    await api(`/api/v1/ui/patients/${encodeURIComponent(pid)}/details`, { method: "POST", body });
    document.getElementById("d-note").value = "";
    delete details.dataset.touched;
    await load();
  } catch (e) {
    if (e.status !== 401) { box.textContent = e.message; box.hidden = false; }
  }
});

const probeGo = document.getElementById("probe-go");
if (probeGo) probeGo.addEventListener("click", () => probeCall("POST", document.getElementById("probe-pick").value));

const confirmName = document.getElementById("confirm-name");
if (confirmName) confirmName.addEventListener("click", async () => {
  try {
    await api(`/api/v1/ui/patients/${encodeURIComponent(pid)}/confirm-name`, { method: "POST", body: {} });
    await load();
  } catch (e) { if (e.status !== 401) showError(e.message); }
});

// The menu: merging is rare, so it lives here, never on the page itself and never pre-selected.
const menuBtn = document.getElementById("menu-btn");
function closeMenu() { menuBtn.setAttribute("aria-expanded", "false"); document.getElementById("patient-menu").hidden = true; }
if (menuBtn) {
  menuBtn.addEventListener("click", () => {
    const open = menuBtn.getAttribute("aria-expanded") !== "true";
    menuBtn.setAttribute("aria-expanded", String(open));
    document.getElementById("patient-menu").hidden = !open;
    if (open) document.getElementById("merge-open").focus();
  });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeMenu(); });
  document.getElementById("merge-open").addEventListener("click", () => { closeMenu(); openMerge(); });
}

// ----------------------------------------------------------------------------- merge
let mergeSource = null; // the other record, found by its tag

function mergeError(text) {
  const box = document.getElementById("merge-error");
  box.textContent = text || "";
  box.hidden = !text;
}

function side(prefix, p) {
  fillPill(document.getElementById(`${prefix}-cat`), p.triage);
  document.getElementById(prefix).textContent = who(p);
  document.getElementById(`${prefix}-name`).textContent = shownName(p);
}

function openMerge() {
  mergeSource = null;
  document.getElementById("merge-query").value = "";
  document.getElementById("merge-both").hidden = true;
  document.getElementById("merge-question").hidden = true;
  document.getElementById("merge-confirm").hidden = true;
  mergeError("");
  document.getElementById("merge-dialog").showModal();
  document.getElementById("merge-query").focus();
}

if (document.getElementById("merge-form")) {
  document.getElementById("merge-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    mergeError("");
    mergeSource = null;
    document.getElementById("merge-confirm").hidden = true;
    try {
      const other = await findPatient(document.getElementById("merge-query").value);
      if (other.id === current.id) throw new Error(t("{who} is this patient.", { who: who(other) }));
      mergeSource = other;
      side("merge-src", other);
      side("merge-dst", current);
      document.getElementById("merge-both").hidden = false;
      const kept = [current.triage, other.triage].sort((a, b) => MERGE_URGENCY.indexOf(a) - MERGE_URGENCY.indexOf(b))[0];
      const q = document.getElementById("merge-question");
      q.textContent = t("Merge {other} ({otherCategory}) into {current} ({currentCategory})? {current} stays {kept} and keeps both tags.",
        { other: who(other), otherCategory: TRIAGE_LABEL[other.triage], current: who(current),
          currentCategory: TRIAGE_LABEL[current.triage], kept: TRIAGE_LABEL[kept] });
      q.hidden = false;
      const ok = document.getElementById("merge-confirm");
      ok.textContent = t("Merge {other} into {current}", { other: who(other), current: who(current) });
      ok.hidden = false;
      ok.focus();
    } catch (e) { if (e.status !== 401) mergeError(e.message); }
  });
  document.getElementById("merge-cancel").addEventListener("click", () => document.getElementById("merge-dialog").close());
  document.getElementById("merge-confirm").addEventListener("click", async () => {
    const other = mergeSource;
    if (!other) return;
    try {
      const out = await api(`/api/v1/ui/patients/${encodeURIComponent(other.id)}/merge`, { method: "POST", body: { into: current.id } });
      document.getElementById("merge-dialog").close();
      const seconds = Math.max(0, (out.undo_seconds || 0) - 1); // the kit's own window, a second to spare
      if (seconds > 0) {
        offerUndo(t("{other} merged into {current}.", { other: who(other), current: who(current) }), t("Undo merge"), async () => {
          await api(`/api/v1/ui/patients/${encodeURIComponent(out.merged)}/unmerge`, { method: "POST", body: {} });
          await load();
        }, seconds);
      }
      await load();
    } catch (e) { if (e.status !== 401) mergeError(e.message); }
  });
}
const MERGE_URGENCY = ["red", "yellow", "green", "grey", "black", "none"];

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

initCarePanel(pid).then(load);
initPage();
