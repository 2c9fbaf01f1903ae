// The page's language for scripts: t("…") gives a text in the language the kit chose for
// this page (<html lang>), from the catalogue static/i18n/<lang>.json (made from the same
// catalogues as the pages by `make i18n`); a text the catalogue lacks stays in English.
// No imports, so every module (offline.js too) can use it without an import cycle.
export const LANG = document.documentElement.lang || "en";
// Dates and numbers: the tablet's own region when it speaks the page's language (en-GB keeps
// its 24-hour clock, es-MX its formats), else the page's language; Latin digits in every
// language (tags, times and counts read the same across a team)
const REGIONAL = (navigator.languages || [navigator.language || ""]).find((l) => l.split("-")[0] === LANG);
export const LOCALE = `${REGIONAL || LANG}${LANG === "ar" ? "-u-nu-latn" : ""}`;

let catalogue = {};
if (LANG !== "en") {
  try {
    const res = await fetch(`/static/i18n/${encodeURIComponent(LANG)}.json`, { credentials: "same-origin" });
    if (res.ok) catalogue = await res.json();
  } catch (e) { /* offline and never kept: the scripts' texts stay in English */ }
}

// t("{n} patients", { n: 3 }): placeholders in braces are filled after translating
export function t(text, vars) {
  const s = (Object.prototype.hasOwnProperty.call(catalogue, text) && catalogue[text]) || text;
  return vars ? s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m)) : s;
}

export function fmtNumber(n, opts) {
  return new Intl.NumberFormat(LOCALE, opts).format(n);
}
