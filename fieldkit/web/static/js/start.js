// START triage (Simple Triage And Rapid Treatment), as the kit's server computes it
// (fieldkit.web.ui_api.start_category). Returns the proposed category, or "none" while the
// path needs more answers, and the next question to ask.
export function startCategory(a) {
  const yes = (k) => a[k] === true;
  const no = (k) => a[k] === false;
  if (yes("walking")) return { cat: "green", next: null };
  if (!no("walking")) return { cat: "none", next: "walking" };
  if (no("breathing")) {
    if (no("breathing_after_airway")) return { cat: "black", next: null };
    if (yes("breathing_after_airway")) return { cat: "red", next: null };
    return { cat: "none", next: "breathing_after_airway" };
  }
  if (!yes("breathing")) return { cat: "none", next: "breathing" };
  if (yes("rr_over_30")) return { cat: "red", next: null };
  if (!no("rr_over_30")) return { cat: "none", next: "rr_over_30" };
  if (yes("perfusion_poor")) return { cat: "red", next: null };
  if (!no("perfusion_poor")) return { cat: "none", next: "perfusion_poor" };
  if (no("obeys")) return { cat: "red", next: null };
  if (yes("obeys")) return { cat: "yellow", next: null };
  return { cat: "none", next: "obeys" };
}
