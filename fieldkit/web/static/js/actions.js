// Moves a triage team makes with gloves on, shared by the board and the patient page:
// find a patient by a typed or scanned tag, assign a capture to them after a confirmation
// that shows both sides, and the undo bar offered after every move. What the kit sends is
// put in the page with textContent only.
import { api, showError, t, TRIAGE_LABEL } from "./common.js";
import { setupScan } from "./scan.js";

export const ASSIGN_UNDO_SECONDS = 15;

const $ = (id) => document.getElementById(id);

export function who(p) { return p.tag ? t("Tag {tag}", { tag: p.tag }) : p.id; }

// A person's name as people write it; a probe's guess says so until a clinician confirms it.
export function shownName(p) {
  const name = p.display_name || "";
  if (!name) return t("Unidentified");
  return p.name_from_probe ? t("{name} (name from probe)", { name }) : name;
}

export function fillPill(pill, triage) {
  pill.className = `cat-pill tri-${triage}`;
  pill.textContent = TRIAGE_LABEL[triage] || triage;
}

// The patient a typed or scanned tag (or kit ID) names, following merges; a clear refusal otherwise.
export async function findPatient(text) {
  const q = (text || "").trim();
  if (!q) throw new Error(t("Type or scan the patient's tag number."));
  try {
    return await api(`/api/v1/ui/patients/${encodeURIComponent(q)}`);
  } catch (e) {
    if (e.status === 404) throw new Error(t("No patient has tag {tag}. Check the tag, or register the patient first (+ New patient).", { tag: q }));
    throw e;
  }
}

// ----------------------------------------------------------------------------- undo bar
let undoTimer = null;
let undoTick = null;
let undoAction = null;

function hideUndo() {
  clearTimeout(undoTimer);
  clearInterval(undoTick);
  undoAction = null;
  const bar = $("undo-bar");
  if (bar) bar.hidden = true;
}

// One bar at a time: `text` and an Undo button for `seconds`; onUndo() does the undoing.
export function offerUndo(text, label, onUndo, seconds) {
  const bar = $("undo-bar");
  if (!bar) return;
  hideUndo();
  const btn = $("undo-btn");
  const until = Date.now() + seconds * 1000;
  $("undo-text").textContent = text;
  btn.disabled = false;
  const show = () => {
    $("undo-left").textContent = t("{n} s", { n: Math.max(0, Math.ceil((until - Date.now()) / 1000)) });
  };
  btn.textContent = label;
  show();
  undoAction = onUndo;
  bar.hidden = false;
  undoTick = setInterval(show, 1000);
  undoTimer = setTimeout(hideUndo, seconds * 1000);
}

function wireUndo() {
  const btn = $("undo-btn");
  if (!btn) return;
  btn.addEventListener("click", async () => {
    const action = undoAction;
    if (!action) return;
    btn.disabled = true;
    try {
      await action();
      hideUndo();
    } catch (e) {
      hideUndo();
      if (e.status !== 401) showError(t("Not undone: {reason}", { reason: e.message }));
    }
  });
}

// ----------------------------------------------------------------------------- assign
let assigning = null; // {uid, from, label, target, onDone}

function assignError(text) {
  const box = $("assign-error");
  box.textContent = text || "";
  box.hidden = !text;
}

function showTarget(p) {
  const box = $("assign-target");
  if (!p) { box.hidden = true; $("assign-confirm").hidden = true; return; }
  fillPill($("assign-cat"), p.triage);
  $("assign-who").textContent = who(p);
  $("assign-name").textContent = shownName(p);
  box.hidden = false;
  const ok = $("assign-confirm");
  ok.textContent = t("Assign to {who}", { who: who(p) });
  ok.hidden = false;
}

// Open the assign dialog for one capture: {uid, from (the patient it is on now), label, onDone}.
export function assignCapture({ uid, from, label, hasThumbnail = true, onDone }) {
  const dlg = $("assign-dialog");
  assigning = { uid, from, label, target: null, onDone };
  const img = $("assign-thumb");
  img.hidden = !hasThumbnail;
  if (hasThumbnail) img.src = `/api/v1/ui/instances/${encodeURIComponent(uid)}/thumbnail.jpg`;
  $("assign-from").textContent = label || "";
  $("assign-query").value = "";
  assignError("");
  showTarget(null);
  dlg.showModal();
  $("assign-query").focus();
}

async function lookUp(ev) {
  ev.preventDefault();
  if (!assigning) return;
  assignError("");
  showTarget(null);
  assigning.target = null;
  try {
    const p = await findPatient($("assign-query").value);
    if (p.id === assigning.from) throw new Error(t("The capture is already on {who}.", { who: who(p) }));
    if (p.triage === "black") throw new Error(t("{who} is recorded as deceased: captures are not assigned to deceased patients.", { who: who(p) }));
    if (p.unassigned) throw new Error(t("{id} holds unassigned captures; it is not a registered patient.", { id: p.id }));
    assigning.target = p;
    showTarget(p);
    $("assign-confirm").focus();
  } catch (e) {
    if (e.status !== 401) assignError(e.message);
  }
}

async function confirmAssign() {
  const job = assigning;
  if (!job || !job.target) return;
  const btn = $("assign-confirm");
  btn.disabled = true;
  try {
    const moved = await api(`/api/v1/ui/instances/${encodeURIComponent(job.uid)}/assign`,
      { method: "POST", body: { patient: job.target.id, from: job.from } });
    $("assign-dialog").close();
    assigning = null;
    const name = who(job.target);
    offerUndo(t("Capture assigned to {name} ({category}).", { name, category: TRIAGE_LABEL[job.target.triage] || job.target.triage }), t("Undo"),
      async () => {
        await api(`/api/v1/ui/instances/${encodeURIComponent(job.uid)}/assign`,
          { method: "POST", body: { patient: moved.from, from: moved.to } });
        if (job.onDone) job.onDone(null);
      }, ASSIGN_UNDO_SECONDS);
    if (job.onDone) job.onDone(moved);
  } catch (e) {
    if (e.status !== 401) assignError(e.message); // e.g. moved meanwhile by another tablet
  } finally { btn.disabled = false; }
}

function wireAssign() {
  const form = $("assign-form");
  if (!form) return;
  form.addEventListener("submit", lookUp);
  $("assign-confirm").addEventListener("click", confirmAssign);
  $("assign-cancel").addEventListener("click", () => { assigning = null; $("assign-dialog").close(); });
  $("assign-dialog").addEventListener("close", () => { assigning = null; });
  setupScan($("assign-scan"), $("assign-video"), $("assign-query"), () => form.requestSubmit());
}

wireUndo();
wireAssign();
