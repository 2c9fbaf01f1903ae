// Day (high contrast) or night (dim) mode, remembered per tablet. A classic script in
// <head> so the page never flashes in the wrong mode.
(function () {
  var KEY = "fieldkit.theme";
  var root = document.documentElement;
  function apply(mode) {
    root.setAttribute("data-theme", mode === "night" ? "night" : "day");
    var b = document.getElementById("theme-toggle");
    if (b) {
      b.setAttribute("aria-pressed", mode === "night" ? "true" : "false");
      // both labels come in the page's language from base.html (data-day-label, data-night-label)
      var txt = b.querySelector(".txt"), ico = b.querySelector(".ico");
      if (txt) txt.textContent = mode === "night" ? (b.dataset.dayLabel || "Day mode") : (b.dataset.nightLabel || "Night mode");
      if (ico) ico.textContent = mode === "night" ? "☀" : "☾"; // the icon shows alone on a phone
    }
  }
  var saved = null;
  try { saved = localStorage.getItem(KEY); } catch (e) { saved = null; }
  apply(saved);
  document.addEventListener("DOMContentLoaded", function () {
    apply(root.getAttribute("data-theme"));
    var b = document.getElementById("theme-toggle");
    if (!b) return;
    b.addEventListener("click", function () {
      var next = root.getAttribute("data-theme") === "night" ? "day" : "night";
      try { localStorage.setItem(KEY, next); } catch (e) { /* private mode: this page only */ }
      apply(next);
    });
  });
})();
