// The per-patient handover sheet: Print, and "Make PDF", which asks the kit to make the
// PDF (kept in the patient's study for the hospital) and offers it as a download from the
// page's memory.
import { csrfToken, t } from "./common.js";

const root = document.getElementById("sheet");
const state = document.getElementById("pdf-state");
document.getElementById("print-btn").addEventListener("click", () => window.print());
document.getElementById("pdf-btn").addEventListener("click", async () => {
  state.textContent = t("Making the PDF…");
  try {
    const res = await fetch(`/api/v1/export/patients/${encodeURIComponent(root.dataset.patientId)}/handover.pdf`,
      { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrfToken() } });
    if (!res.ok) {
      let msg = t("The kit answered {status}.", { status: res.status });
      try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
      state.textContent = msg;
      return;
    }
    const url = URL.createObjectURL(await res.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = (res.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/)?.[1] || "handover.pdf";
    a.textContent = t("Download the PDF");
    a.className = "btn";
    state.replaceChildren(t("PDF made and kept for the hospital.") + " ", a);
    a.click();
  } catch (e) {
    state.textContent = t("The kit cannot be reached. Check the kit's Wi-Fi.");
  }
});
