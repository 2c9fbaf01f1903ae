// Time, place and movement: what a card says of zone, disposition and interventions, when a
// patient is due to be re-triaged, and the patient page's "Place and care" section (the
// triage role may write it). Text goes in the page with textContent only.
import { api, el, fmtTime, LOCALE, showError, t } from "./common.js";

let options = null; // the kit's zones, intervention kinds, dispositions, re-triage intervals

export async function careOptions() {
  if (!options) options = await api("/api/v1/ui/care/options");
  return options;
}

function hhmm(at) {
  return new Date(at * 1000).toLocaleTimeString(LOCALE, { hour: "2-digit", minute: "2-digit" });
}

// The kit's built-in names (store/care.py, the default triage.zones) in the page's language;
// a zone a site named itself is shown as it was named.
const ZONE = { "Triage point": t("Triage point"), "Red area": t("Red area"), "Yellow area": t("Yellow area"),
  "Green area": t("Green area"), "Casualty collection point": t("Casualty collection point"),
  "Ambulance loading": t("Ambulance loading") };
const INTERVENTION = { tourniquet: ["Tourniquet", t("Tourniquet")], airway: ["Airway", t("Airway")],
  fluids: ["Fluids", t("Fluids")], analgesia: ["Analgesia", t("Analgesia")] };
const DISPOSITION = { in_treatment: t("in treatment"), awaiting_transport: t("awaiting transport"),
  left: t("left"), discharged: t("discharged"), deceased: t("deceased") };

export function zoneName(zone) { return ZONE[zone] || zone; }

// "Tourniquet: left thigh" with the kind's name translated (what was typed stays as typed)
export function interventionText(i) {
  const known = INTERVENTION[i.kind];
  return known && (i.what || "").startsWith(known[0]) ? known[1] + i.what.slice(known[0].length) : i.what;
}

// "left by Amb 3 to St X", "in treatment"
export function dispositionText(d, english) {
  if (!d || !d.state) return english || "";
  if (d.state === "left" && d.destination) {
    return d.vehicle ? t("left by {vehicle} to {destination}", d) : t("left to {destination}", d);
  }
  return DISPOSITION[d.state] || english || d.state;
}

// "Red area · left by Amb 3 to St X · Tourniquet: left thigh 14:32 (+1)" — one line on the card
export function placeText(p) {
  const parts = [];
  if (p.zone) parts.push(zoneName(p.zone));
  if (p.disposition_text) parts.push(dispositionText(p.disposition, p.disposition_text));
  const iv = p.interventions || [];
  if (iv.length) {
    const last = iv[iv.length - 1];
    parts.push(`${interventionText(last)} ${hhmm(last.at)}` + (iv.length > 1 ? ` (+${iv.length - 1})` : ""));
  }
  return parts.join(" · ");
}

const DONE = ["left", "discharged", "deceased"];

// When the patient is due to be seen again (kit seconds), or null (category not timed, gone)
export function dueAt(p, minutes) {
  const last = p.retriaged_at || p.triaged_at;
  if (!last || !minutes || !(p.triage in minutes)) return null;
  if (p.disposition && DONE.includes(p.disposition.state)) return null;
  return last + minutes[p.triage] * 60;
}

// ----------------------------------------------------------------------------- patient page
export function renderPlace(p) {
  if (!document.getElementById("care")) return;
  const zone = document.getElementById("c-zone");
  if (zone && document.activeElement !== zone) zone.value = p.zone || "";
  document.getElementById("c-disp-now").textContent = p.disposition_text ? t("Now: {what}", { what: dispositionText(p.disposition, p.disposition_text) }) : "";
  const list = document.getElementById("interventions");
  list.replaceChildren(...(p.interventions || []).map((i) => el("li", "", `${fmtTime(i.at)} ${interventionText(i)}`)));
  const hist = document.getElementById("movement");
  hist.replaceChildren(...(p.movement_history || []).map((h) => {
    const d = h.disposition;
    const by = h.by ? " " + t("by {who}", { who: h.by }) : "";
    const none = t("none");
    const text = d ? `${fmtTime(d.at)} ${dispositionText(d, (options && options.dispositions[d.state]) || d.state)}`
      + (d.by ? " " + t("by {who}", { who: d.by }) : "")
      : fmtTime(h.at) + " " + t("zone: {zone}", { zone: h.zone ? zoneName(h.zone) : none }) + by;
    return el("li", "", text);
  }));
}

async function post(pid, what, body, box) {
  box.hidden = true;
  try {
    const p = await api(`/api/v1/ui/patients/${encodeURIComponent(pid)}/${what}`, { method: "POST", body });
    renderPlace(p);
    return true;
  } catch (e) {
    if (e.status !== 401) { box.textContent = e.message; box.hidden = false; }
    return false;
  }
}

export async function initCarePanel(pid) {
  const root = document.getElementById("care");
  if (!root) return;
  const box = document.getElementById("care-error");
  try { await careOptions(); } catch (e) { if (e.status !== 401) showError(e.message); return; }
  const zone = document.getElementById("c-zone");
  if (zone) {
    zone.replaceChildren(el("option", "", t("– no zone –")), ...options.zones.map((z) => {
      const o = el("option", "", zoneName(z)); o.value = z; return o;
    }));
    zone.options[0].value = "";
    zone.addEventListener("change", () => post(pid, "place", { zone: zone.value }, box));
  }
  const kind = document.getElementById("c-kind");
  if (kind) kind.replaceChildren(...Object.entries(options.interventions).map(([k, label]) => {
    const o = el("option", "", INTERVENTION[k] ? INTERVENTION[k][1] : (k === "other" ? t("Other") : label)); o.value = k; return o;
  }));
  const ivForm = document.getElementById("c-intervention");
  if (ivForm) ivForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { kind: kind.value, text: document.getElementById("c-text").value };
    const at = document.getElementById("c-at").value; // "HH:MM" today, when it was done
    if (at) {
      const d = new Date(); const [h, m] = at.split(":").map(Number);
      d.setHours(h, m, 0, 0);
      if (d.getTime() > Date.now() + 120000) d.setDate(d.getDate() - 1); // after midnight: yesterday
      body.at = d.getTime() / 1000;
    }
    if (await post(pid, "interventions", body, box)) {
      document.getElementById("c-text").value = "";
      document.getElementById("c-at").value = "";
    }
  });
  const state = document.getElementById("c-state");
  if (state) state.replaceChildren(...Object.entries(options.dispositions).map(([k, label]) => {
    const o = el("option", "", DISPOSITION[k] || label); o.value = k; return o;
  }));
  const leave = document.getElementById("c-leave");
  if (state) state.addEventListener("change", () => { leave.hidden = state.value !== "left"; });
  const dForm = document.getElementById("c-disposition");
  if (dForm) dForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { state: state.value };
    if (state.value === "left") {
      body.destination = document.getElementById("c-dest").value;
      body.vehicle = document.getElementById("c-vehicle").value;
    }
    await post(pid, "disposition", body, box);
  });
}
