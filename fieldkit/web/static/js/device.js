// Device page: battery, temperature, disk, power policy, queues, models, kit ID, version.
import { api, el, fmtBytes, fmtNumber, fmtTime, initPage, live, LOCALE, showError, t } from "./common.js";

function set(id, text) { document.getElementById(id).textContent = text; }

function clockText(c) {
  if (!c) return "–";
  const j = c.last_jump;
  if (!j) return t("steady since the kit started");
  const s = Math.abs(j.seconds);
  const size = s >= 3600 ? t("{n} h", { n: (s / 3600).toFixed(1) }) : s >= 60 ? t("{n} min", { n: Math.round(s / 60) })
    : t("{n} s", { n: Math.round(s) });
  const n = c.jumps.length > 1 ? " " + t("({n} jumps)", { n: c.jumps.length }) : "";
  const text = j.seconds > 0 ? t("jumped forwards {size} at {when}{n}: times recorded around it may be off", { size, when: fmtTime(j.at), n })
    : t("jumped backwards {size} at {when}{n}: times recorded around it may be off", { size, when: fmtTime(j.at), n });
  return text;
}

function q(counts) {
  if (!counts) return "–";
  return t("{ready} waiting · {leased} working · {done} done · {failed} failed",
    { ready: counts.ready || 0, leased: counts.leased || 0, done: counts.done || 0, failed: counts.failed || 0 });
}

function backupText(b) {
  if (!b || !b.at) return b && b.scheduled ? t("none yet (every {n} h to {path})", { n: b.every_hours, path: b.path }) : t("never (set backup.path)");
  const when = new Date(b.at * 1000).toLocaleString(LOCALE);
  return b.ok ? t("{when} to {target}: ok", { when, target: b.target }) : t("{when} to {target}: FAILED — {error}", { when, target: b.target, error: b.error });
}

function tlsText(tls) {
  if (!tls || !tls.server_expires) return t("no server certificate found");
  const days = Math.floor((tls.server_expires * 1000 - Date.now()) / 86400000);
  const when = new Date(tls.server_expires * 1000).toLocaleDateString(LOCALE);
  if (days < 0) return t("EXPIRED on {when}: run `fieldkit tls renew`", { when });
  return days < 30 ? t("valid until {when} ({days} days): run `fieldkit tls renew` soon", { when, days })
    : t("valid until {when} ({days} days)", { when, days });
}

function auditText(a) {
  if (!a) return "–";
  if (!a.seq) return t("not anchored at the hospital yet ({n} events on the kit)", { n: a.head_seq });
  return t("last anchored at {when} : seq {seq} ({n} events on the kit)", { when: fmtTime(a.at), seq: a.seq, n: a.head_seq });
}

async function refresh() {
  try {
    const d = await api("/api/v1/ui/device");
    set("dv-kit", d.kit_id || "–");
    set("dv-version", d.version);
    const r = (d.power && d.power.reading) || {};
    set("dv-battery", r.battery_percent === null || r.battery_percent === undefined ? t("no battery sensor")
      : fmtNumber(Math.round(r.battery_percent)) + "% " + (r.on_battery ? t("(on battery)") : t("(charging / mains)")));
    set("dv-temp", r.temperature_c === null || r.temperature_c === undefined ? t("no temperature sensor") : `${fmtNumber(r.temperature_c, { maximumFractionDigits: 1, minimumFractionDigits: 1 })} °C`);
    set("dv-disk", r.disk_free_bytes ? t("{free} free of {total}", { free: fmtBytes(r.disk_free_bytes), total: fmtBytes(r.disk_total_bytes) }) : "–");
    set("dv-space", !d.disk ? "–" : d.disk.message || t("enough space; captures accepted"));
    document.getElementById("dv-space").dataset.level = (d.disk && d.disk.level) || "";
    const pol = (d.power && d.power.policy) || {};
    set("dv-policy", (pol.reasons && pol.reasons.length) ? pol.reasons.join("; ") : (d.power && d.power.error ? d.power.error : t("full speed")));
    set("dv-infer", q(d.queues && d.queues.infer));
    set("dv-sync", q(d.queues && d.queues.sync));
    set("dv-live", t("{open} open of {max}", d.live));
    set("dv-backup", backupText(d.backup));
    const damage = d.damage || [];
    const sc = d.scrub || {};
    set("dv-scrub", damage.length ? t("{n} damaged (see below)", { n: damage.length })
      : (sc.running ? t("verified every {n} days, no damage found", { n: +(sc.period_days || 0).toFixed(2) })
        : (sc.reason ? t("no damage found (scrub off: {reason})", { reason: sc.reason }) : t("no damage found (scrub off)"))));
    document.getElementById("dv-damage-panel").hidden = !damage.length;
    document.getElementById("dv-damage").replaceChildren(...damage.map((x) =>
      el("li", "", t("capture {uid} (blob {blob}…): {reason}", { uid: x.sop_instance_uid, blob: String(x.blob).slice(0, 12), reason: x.reason }))));
    set("dv-clock", clockText(d.clock));
    set("dv-tls", tlsText(d.tls));
    set("dv-audit", auditText(d.audit));
    const models = (d.inference && d.inference.models) || [];
    const list = document.getElementById("dv-models");
    if (Array.isArray(models) && models.length) {
      list.replaceChildren(...models.map((m) => el("li", "", typeof m === "string" ? m
        : `${m.name || "?"} v${m.version || "?"} — ` + (m.status || (m.loaded ? t("loaded") : t("not loaded")))
          + (m.reason ? ": " + m.reason : ""))));
    } else {
      list.replaceChildren(el("li", "", d.inference && d.inference.running ? t("no model loaded")
      : t("inference not running") + (d.inference && d.inference.reason ? ": " + d.inference.reason : "")));
    }
    showError("");
  } catch (e) { if (e.status !== 401) showError(e.message); }
}
refresh();
setInterval(refresh, 10000);
live((topic) => { if (topic === "power.policy") refresh(); }, () => refresh(), ["power.policy"]);
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
    const live = p.session && p.session.until > now ? t("patient {pid} until {when}", { pid: p.session.patient_id, when: fmtTime(p.session.until) }) : "–";
    [p.ae, p.name || "–", p.host || "–", live].forEach((text) => tr.appendChild(el("td", "", text)));
    const td = el("td");
    td.appendChild(button(t("Remove"), t("Remove probe {ae}", { ae: p.ae }), () => probeAction(() =>
      api(`/api/v1/probes/${encodeURIComponent(p.ae)}`, { method: "DELETE" }))));
    tr.appendChild(td);
    return tr;
  }));
  document.getElementById("no-registered").hidden = data.probes.length > 0;
  const registered = new Set(data.probes.map((p) => p.ae));
  const refused = data.refused.filter((r) => !registered.has(r.ae));
  document.getElementById("no-refused").hidden = refused.length > 0;
  document.getElementById("refused").replaceChildren(...refused.map((r) => {
    const li = el("li", "", (r.count === 1 ? t("{ae} from {address}: refused 1 time, last at {when}", { ae: r.ae, address: r.address, when: fmtTime(r.last) })
      : t("{ae} from {address}: refused {n} times, last at {when}", { ae: r.ae, address: r.address, n: r.count, when: fmtTime(r.last) })) + " ");
    li.dataset.ae = r.ae;
    li.appendChild(button(t("Allow"), t("Allow {ae}", { ae: r.ae }), () => probeAction(() =>
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
