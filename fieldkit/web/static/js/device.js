// Device page: battery, temperature, disk, power policy, queues, models, kit ID, version.
import { api, el, fmtBytes, fmtTime, initPage, live, showError } from "./common.js";

function set(id, text) { document.getElementById(id).textContent = text; }

function clockText(c) {
  if (!c) return "–";
  const j = c.last_jump;
  if (!j) return "steady since the kit started";
  const s = Math.abs(j.seconds);
  const size = s >= 3600 ? `${(s / 3600).toFixed(1)} h` : s >= 60 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`;
  const n = c.jumps.length > 1 ? ` (${c.jumps.length} jumps)` : "";
  return `jumped ${j.seconds > 0 ? "forwards" : "backwards"} ${size} at ${fmtTime(j.at)}${n}: times recorded around it may be off`;
}

function q(counts) {
  if (!counts) return "–";
  return `${counts.ready || 0} waiting · ${counts.leased || 0} working · ${counts.done || 0} done · ${counts.failed || 0} failed`;
}

function backupText(b) {
  if (!b || !b.at) return b && b.scheduled ? `none yet (every ${b.every_hours} h to ${b.path})` : "never (set backup.path)";
  const when = new Date(b.at * 1000).toLocaleString();
  return b.ok ? `${when} to ${b.target}: ok` : `${when} to ${b.target}: FAILED — ${b.error}`;
}

function tlsText(t) {
  if (!t || !t.server_expires) return "no server certificate found";
  const days = Math.floor((t.server_expires * 1000 - Date.now()) / 86400000);
  const when = new Date(t.server_expires * 1000).toLocaleDateString();
  return days < 0 ? `EXPIRED on ${when}: run \`fieldkit tls renew\``
    : `valid until ${when} (${days} days)${days < 30 ? ": run `fieldkit tls renew` soon" : ""}`;
}

function auditText(a) {
  if (!a) return "–";
  if (!a.seq) return `not anchored at the hospital yet (${a.head_seq} events on the kit)`;
  return `last anchored at ${fmtTime(a.at)} : seq ${a.seq} (${a.head_seq} events on the kit)`;
}

async function refresh() {
  try {
    const d = await api("/api/v1/ui/device");
    set("dv-kit", d.kit_id || "–");
    set("dv-version", d.version);
    const r = (d.power && d.power.reading) || {};
    set("dv-battery", r.battery_percent === null || r.battery_percent === undefined ? "no battery sensor"
      : `${Math.round(r.battery_percent)}%${r.on_battery ? " (on battery)" : " (charging / mains)"}`);
    set("dv-temp", r.temperature_c === null || r.temperature_c === undefined ? "no temperature sensor" : `${r.temperature_c.toFixed(1)} °C`);
    set("dv-disk", r.disk_free_bytes ? `${fmtBytes(r.disk_free_bytes)} free of ${fmtBytes(r.disk_total_bytes)}` : "–");
    set("dv-space", !d.disk ? "–" : d.disk.message || "enough space; captures accepted");
    document.getElementById("dv-space").dataset.level = (d.disk && d.disk.level) || "";
    const pol = (d.power && d.power.policy) || {};
    set("dv-policy", (pol.reasons && pol.reasons.length) ? pol.reasons.join("; ") : (d.power && d.power.error ? d.power.error : "full speed"));
    set("dv-infer", q(d.queues && d.queues.infer));
    set("dv-sync", q(d.queues && d.queues.sync));
    set("dv-live", `${d.live.open} open of ${d.live.max}`);
    set("dv-backup", backupText(d.backup));
    const damage = d.damage || [];
    const sc = d.scrub || {};
    set("dv-scrub", damage.length ? `${damage.length} damaged (see below)`
      : (sc.running ? `verified every ${+(sc.period_days || 0).toFixed(2)} days, no damage found` : `no damage found (scrub off${sc.reason ? ": " + sc.reason : ""})`));
    document.getElementById("dv-damage-panel").hidden = !damage.length;
    document.getElementById("dv-damage").replaceChildren(...damage.map((x) =>
      el("li", "", `capture ${x.sop_instance_uid} (blob ${String(x.blob).slice(0, 12)}…): ${x.reason}`)));
    set("dv-clock", clockText(d.clock));
    set("dv-tls", tlsText(d.tls));
    set("dv-audit", auditText(d.audit));
    const models = (d.inference && d.inference.models) || [];
    const list = document.getElementById("dv-models");
    if (Array.isArray(models) && models.length) {
      list.replaceChildren(...models.map((m) => el("li", "", typeof m === "string" ? m
        : `${m.name || "?"} v${m.version || "?"} — ${m.status || (m.loaded ? "loaded" : "not loaded")}${m.reason ? ": " + m.reason : ""}`)));
    } else {
      list.replaceChildren(el("li", "", d.inference && d.inference.running ? "no model loaded" : `inference not running${d.inference && d.inference.reason ? ": " + d.inference.reason : ""}`));
    }
    showError("");
  } catch (e) { if (e.status !== 401) showError(e.message); }
}
refresh();
setInterval(refresh, 10000);
live((t) => { if (t === "power.policy") refresh(); }, () => refresh(), ["power.policy"]);
initPage();

// ----------------------------------------------------------------------------- probes (admins)
// Registered probes (add, remove) and the callers the DICOM receiver refused ("Allow").
const probesPanel = document.getElementById("probes-panel");
let lastProbes = "";

async function probeAction(fn) {
  const box = document.getElementById("probe-add-error");
  box.hidden = true;
  try {
    await fn();
    await refreshProbes();
  } catch (e) { if (e.status !== 401) { box.textContent = e.message; box.hidden = false; } }
}

function button(text, label, onClick) {
  const b = el("button", "btn", text);
  b.type = "button";
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

async function refreshProbes() {
  let data;
  try { data = await api("/api/v1/probes"); } catch (e) { if (e.status !== 401) showError(e.message); return; }
  const seen = JSON.stringify(data);
  if (seen === lastProbes) return; // unchanged: the buttons stay the ones a finger is on
  lastProbes = seen;
  const now = Date.now() / 1000;
  document.getElementById("probe-rows").replaceChildren(...data.probes.map((p) => {
    const tr = document.createElement("tr");
    tr.dataset.ae = p.ae;
    const live = p.session && p.session.until > now ? `patient ${p.session.patient_id} until ${fmtTime(p.session.until)}` : "–";
    [p.ae, p.name || "–", p.host || "–", live].forEach((t) => tr.appendChild(el("td", "", t)));
    const td = el("td");
    td.appendChild(button("Remove", `Remove probe ${p.ae}`, () => probeAction(() =>
      api(`/api/v1/probes/${encodeURIComponent(p.ae)}`, { method: "DELETE" }))));
    tr.appendChild(td);
    return tr;
  }));
  document.getElementById("no-registered").hidden = data.probes.length > 0;
  const registered = new Set(data.probes.map((p) => p.ae));
  const refused = data.refused.filter((r) => !registered.has(r.ae));
  document.getElementById("no-refused").hidden = refused.length > 0;
  document.getElementById("refused").replaceChildren(...refused.map((r) => {
    const li = el("li", "", `${r.ae} from ${r.address}: refused ${r.count} time${r.count === 1 ? "" : "s"}, last at ${fmtTime(r.last)} `);
    li.dataset.ae = r.ae;
    li.appendChild(button("Allow", `Allow ${r.ae}`, () => probeAction(() =>
      api("/api/v1/probes", { method: "POST", body: { probe: r.ae, host: r.address } }))));
    return li;
  }));
}

if (probesPanel) {
  refreshProbes();
  setInterval(refreshProbes, 10000);
  document.getElementById("probe-add").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { probe: document.getElementById("pa-ae").value, name: document.getElementById("pa-name").value,
      host: document.getElementById("pa-host").value };
    probeAction(async () => {
      await api("/api/v1/probes", { method: "POST", body });
      ev.target.reset();
    });
  });
}
