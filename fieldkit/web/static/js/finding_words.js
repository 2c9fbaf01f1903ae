// A board card's positive AI findings in the page's language ("B-lines 4, R2", "free fluid:
// RUQ", "no lung sliding, L2"): the kit sends each as a code (store/finding_words.py) next to its English words; a
// code this script does not know is shown in the kit's words.
import { t } from "./common.js";

// FAST windows as the kit names them from the capture's description (RUQ and LUQ stay as they are)
const WINDOW = { pelvic: t("pelvic"), pelvis: t("pelvis"), suprapubic: t("suprapubic"),
  pericardial: t("pericardial"), pericardium: t("pericardium"), subxiphoid: t("subxiphoid") };

function say(code, english) {
  if (!code) return english;
  const where = code.where || "";
  if (code.kind === "b_lines" || code.kind === "b_lines_confluent") {
    const lines = code.kind === "b_lines" ? t("B-lines {n}", { n: code.n }) : t("B-lines confluent");
    return where ? t("{lines}, {zone}", { lines, zone: where }) : lines;
  }
  if (code.kind === "no_lung_sliding" || code.kind === "partial_lung_sliding") {
    const what = code.kind === "no_lung_sliding" ? t("no lung sliding") : t("lung sliding in part only");
    return where ? t("{lines}, {zone}", { lines: what, zone: where }) : what;
  }
  if (code.kind === "free_fluid") {
    return where ? t("free fluid: {window}", { window: WINDOW[where] || where }) : t("free fluid");
  }
  return english;
}

// {all: [words of each finding], why: the words of the one that argues for a more urgent category}
export function cardFindingWords(p) {
  const codes = p.finding_codes || [];
  const argues = p.finding_argues;
  return { all: (p.finding_words || []).map((w, i) => say(codes[i], w)),
    why: argues ? say(argues.why_code, argues.why) : "" };
}
