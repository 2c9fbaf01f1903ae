// New patient: tag number (typed, or scanned with the camera), the START assistant proposing
// a category, the clinician confirming or overriding it. "Add and register next" saves and
// leaves the form empty for the next patient, naming the one just registered.
import { api, el, initPage, t, TRIAGE_LABEL } from "./common.js";
import { setupScan } from "./scan.js";
import { startCategory } from "./start.js";

const form = document.getElementById("new-patient");
const answers = {};
const proposal = document.getElementById("proposal");
const errorBox = document.getElementById("form-error");

function chosen() {
  const r = form.querySelector('input[name="triage"]:checked');
  return r ? r.value : null;
}

function markChoices() {
  form.querySelectorAll(".tri-choice").forEach((l) => l.classList.toggle("checked", l.querySelector("input").checked));
}

function choose(cat) {
  form.querySelectorAll('input[name="triage"]').forEach((r) => { r.checked = r.value === cat; });
  markChoices();
}

function update() {
  const { cat, next } = startCategory(answers);
  // show the questions on the path so far, and the next one
  const path = [];
  for (const q of ["walking", "breathing", "breathing_after_airway", "rr_over_30", "perfusion_poor", "obeys"]) {
    if (q in answers) path.push(q);
  }
  form.querySelectorAll(".q").forEach((div) => {
    const q = div.dataset.q;
    div.hidden = !(q in answers || q === next);
    div.querySelectorAll(".yn-b").forEach((b) => {
      const v = answers[q];
      b.setAttribute("aria-pressed", String((v === true && b.dataset.v === "yes") || (v === false && b.dataset.v === "no")));
    });
  });
  if (cat !== "none") {
    proposal.textContent = t("START proposes: {category} ({code}). Confirm below, or choose another category.",
      { category: TRIAGE_LABEL[cat], code: cat });
    choose(cat);
  } else {
    proposal.textContent = t("Answer the questions, or choose a category below.");
  }
}

// an answer drops later answers that no longer apply
const ORDER = ["walking", "breathing", "breathing_after_airway", "rr_over_30", "perfusion_poor", "obeys"];
form.querySelectorAll(".q").forEach((div) => {
  div.querySelectorAll(".yn-b").forEach((b) => b.addEventListener("click", () => {
    const q = div.dataset.q;
    ORDER.slice(ORDER.indexOf(q)).forEach((k) => delete answers[k]);
    answers[q] = b.dataset.v === "yes";
    update();
  }));
});
function startOver() {
  ORDER.forEach((k) => delete answers[k]);
  form.querySelectorAll('input[name="triage"]').forEach((r) => { r.checked = false; });
  markChoices();
  update();
}
document.getElementById("start-reset").addEventListener("click", startOver);
form.querySelectorAll('input[name="triage"]').forEach((r) => r.addEventListener("change", markChoices));

const tagInput = document.getElementById("tag");
const lastBox = document.getElementById("last-registered");

// The form again, empty, for the next patient; the one just registered named with a link.
function readyForNext(patient, offline) {
  const name = patient.tag ? t("Tag {tag}", { tag: patient.tag }) : patient.id;
  const cat = TRIAGE_LABEL[patient.triage] || patient.triage;
  const link = el("a", null, name);
  link.href = "/patients/" + encodeURIComponent(patient.id);
  lastBox.replaceChildren(offline ? t("Kept on this tablet, sent when the kit is back:") + " " : t("Registered:") + " ", link,
    " · " + t("{category}. Next patient: scan or type the tag.", { category: cat }));
  lastBox.dataset.patientId = patient.id;
  lastBox.hidden = false;
  tagInput.value = "";
  startOver();
  tagInput.focus();
}

// Enter in the tag (a tag scanner that types, or the keypad's Done) moves on to the questions
// rather than submitting a patient with no category.
tagInput.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !chosen()) {
    ev.preventDefault();
    form.querySelector(".q:not([hidden]) .yn-b").focus();
  }
});

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  errorBox.hidden = true;
  const next = !ev.submitter || ev.submitter.id !== "create"; // Enter: the primary button
  const triage = chosen();
  if (!triage) {
    errorBox.textContent = t("Choose a category (or answer the START questions).");
    errorBox.hidden = false;
    return;
  }
  const buttons = form.querySelectorAll("button[type=submit]");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const out = await api("/api/v1/ui/patients", { method: "POST",
      body: { tag: tagInput.value, triage, answers } });
    if (next) readyForNext(out.patient, !!out.offline);
    else location.assign("/#" + encodeURIComponent(out.patient.id));
  } catch (e) {
    if (e.status !== 401) { errorBox.textContent = e.message; errorBox.hidden = false; }
  } finally { buttons.forEach((b) => { b.disabled = false; }); }
});

update();
// a read tag moves on to the first question
setupScan(document.getElementById("scan"), document.getElementById("scan-video"), tagInput,
  () => form.querySelector(".q:not([hidden]) .yn-b").focus(), { preload: true });
initPage();
markChoices();
