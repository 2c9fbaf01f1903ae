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
