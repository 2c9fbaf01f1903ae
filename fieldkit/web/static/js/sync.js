// Sync page: link state, rate, bytes and ETA, whole-queue progress, items with their
// progress, quarantined items with the hospital's reason and a retry button.
import { api, el, fmtBytes, initPage, live, showError, t } from "./common.js";

const STATE = { queued: t("queued"), sending: t("sending"), confirmed: t("confirmed"), quarantined: t("quarantined") };

function eta(s) {
  if (s === null || s === undefined) return t("unknown (no rate measured yet)");
  if (s <= 0) return t("nothing left");
  if (s < 90) return t("{n} s", { n: Math.round(s) });
  return t("{n} min", { n: (s / 60).toFixed(1) });
}

const updateWord = t("update");
const itemWord = t("item");
const noReason = t("no reason given");

function render(st) {
  document.getElementById("s-link").textContent = (st.link_up ? t("up") : t("down")) + (st.link ? " — " + st.link : "");
  document.getElementById("s-link").dataset.up = String(!!st.link_up);
  document.getElementById("s-rate").textContent = st.rate_bytes_per_s ? `${fmtBytes(st.rate_bytes_per_s)}/s` : "–";
  document.getElementById("s-bytes").textContent = fmtBytes(st.queue_bytes || 0);
  document.getElementById("s-eta").textContent = eta(st.eta_seconds);
  document.getElementById("s-error").textContent = st.last_error || t("none");
  const c = st.counts;
  const prog = document.getElementById("s-progress");
  prog.value = st.done_fraction;
  prog.dataset.confirmed = String(c.confirmed);
  document.getElementById("s-counts").textContent =
    t("{confirmed} confirmed · {sending} sending · {queued} queued · {quarantined} quarantined", c);
  const tpl = document.getElementById("sync-item-template");
  const frag = document.createDocumentFragment();
  st.items.forEach((it) => {
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.dataset.state = it.state;
    li.dataset.rowId = it.row_id;
    li.querySelector(".si-state").textContent = STATE[it.state] || it.state;
    li.querySelector(".si-what").textContent = it.sop_instance_uid
      ? t("Patient {pid} · {uid}", { pid: it.patient_id || "?", uid: it.sop_instance_uid })
      : t("{what} for patient {pid}", { what: it.what || updateWord, pid: it.patient_id || "?" });
    const p = li.querySelector(".si-progress");
    if (it.state === "confirmed") p.value = 1;
    else if (it.bytes_total) p.value = it.bytes_done / it.bytes_total;
    else p.value = 0;
    p.setAttribute("aria-label", t("progress of {what}", { what: it.sop_instance_uid || it.what || itemWord }));
    li.querySelector(".si-bytes").textContent = it.bytes_total
      ? t("{done} of {total}", { done: fmtBytes(it.bytes_done), total: fmtBytes(it.bytes_total) }) : fmtBytes(it.size || 0);
    if (it.state === "quarantined") {
      li.querySelector(".si-reason").textContent = t("Hospital said: {reason}", { reason: it.reason || noReason });
      const b = li.querySelector(".si-retry");
      b.hidden = false;
      b.addEventListener("click", async () => {
        try { await api(`/api/v1/ui/sync/${encodeURIComponent(it.row_id)}/retry`, { method: "POST", body: {} }); refresh(); }
        catch (e) { if (e.status !== 401) showError(e.message); }
      });
    } else if (it.last_error) {
      li.querySelector(".si-reason").textContent = t("Last attempt: {error}", { error: it.last_error });
    }
    frag.appendChild(li);
  });
  document.getElementById("s-items").replaceChildren(frag);
}

async function refresh() {
  try { render(await api("/api/v1/ui/sync")); showError(""); }
  catch (e) { if (e.status !== 401) showError(e.message); }
}

let pending = null;
function soon() { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 300); }
refresh();
setInterval(refresh, 3000); // bytes in flight change between events
live(() => soon(), () => soon());
initPage();
