// fieldkit service worker: keeps the app shell and the last-seen board, so a reload while
// the kit is briefly unreachable shows the last board marked stale instead of an error.
// Only the board's first page is kept (it is what a triage team needs first); patient images never are.
// Offline, each page is either itself (the board, New patient, a patient page filled from the
// kept board by offline.js) or a page saying it is not available offline; never another page.
const SHELL = "fieldkit-shell-v1";
const DATA = "fieldkit-data-v1";
const ASSETS = ["/static/css/app.css", "/static/js/theme.js", "/static/js/common.js", "/static/js/board.js", "/static/js/actions.js",
  "/static/js/start.js", "/static/js/scan.js", "/static/js/new_patient.js", "/static/js/patient.js", "/static/js/sync.js",
  "/static/js/device.js", "/static/icons/icon.svg", "/static/icons/icon-192.png", "/manifest.webmanifest",
  "/static/js/care.js", "/static/js/finding_words.js", "/static/js/offline.js", "/static/js/i18n.js",
  "/static/i18n/fr.json", "/static/i18n/es.json", "/static/i18n/ar.json",
  // the tag reader for browsers without BarcodeDetector: scanning works while the kit is out of reach
  "/static/vendor/barcode-detector/ponyfill.js", "/static/vendor/barcode-detector/zxing_reader.wasm"];
const BOARD_API = "/api/v1/ui/board";
const NEW_PAGE = "/patients/new";
const PATIENT_SHELL = "/patients/__offline__"; // the patient page for no one: offline, any patient's
const PATIENT_PAGE = /^\/patients\/([^/]+)$/;

// The New-patient page and the patient page shell, kept once per sign-in (their data comes
// from the API; sign-out deletes them with the board)
async function keepShells(cache) {
  for (const page of [NEW_PAGE, PATIENT_SHELL]) {
    if (await cache.match(page)) continue;
    try {
      const res = await fetch(page, { credentials: "same-origin" });
      if (res.ok && !res.redirected) await cache.put(page, res);
    } catch (e) { /* kept at the next board visit */ }
  }
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

async function offlinePage(url) {
  const cache = await caches.open(SHELL);
  if (url.pathname === "/" || url.pathname === NEW_PAGE) {
    const page = await cache.match(url.pathname);
    if (page) return page;
  }
  const m = url.pathname.match(PATIENT_PAGE);
  const shell = m && await cache.match(PATIENT_SHELL);
  if (shell) {
    let pid;
    try { pid = decodeURIComponent(m[1]); } catch (e) { pid = ""; }
    if (pid) {
      const html = (await shell.text()).split("__offline__").join(escapeHtml(pid));
      return new Response(html, { status: 200, headers: shell.headers });
    }
  }
  return new Response("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">" +
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">" +
    "<title>Not available offline · fieldkit</title><link rel=\"stylesheet\" href=\"/static/css/app.css\"></head>" +
    "<body><main id=\"main\"><h1>Not available offline</h1>" +
    "<p>The kit cannot be reached, and this page is not kept on this tablet.</p>" +
    "<p><a class=\"btn primary\" href=\"/\">Back to the board</a> (as last seen; registrations and re-triage are kept " +
    "and sent when the kit is back)</p></main></body></html>",
    { status: 503, headers: { "Content-Type": "text/html; charset=utf-8" } });
}

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(SHELL);
    await cache.addAll(ASSETS);
    try { // the board page itself, when signed in (never the sign-in page in its place)
      const res = await fetch("/", { credentials: "same-origin" });
      if (res.ok && !res.redirected) await cache.put("/", res);
    } catch (e) { /* cached at the next visit */ }
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key !== SHELL && key !== DATA) await caches.delete(key);
    }
    await self.clients.claim();
  })());
});

async function stamped(res) {
  // remember when this copy was taken, for the stale banner
  const headers = new Headers(res.headers);
  headers.set("X-Fieldkit-Cached-At", String(Date.now() / 1000));
  return new Response(await res.clone().blob(), { status: res.status, statusText: res.statusText, headers });
}

async function markStale(res) {
  const headers = new Headers(res.headers);
  headers.set("X-Fieldkit-Stale", "1");
  return new Response(await res.blob(), { status: res.status, statusText: res.statusText, headers });
}

self.addEventListener("fetch", (event) => {
  const req = event.request;
  if (req.method !== "GET") return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;

  // the board's first page (asked with a larger `limit` when a tablet reloads the pages it had
  // shown); further pages, categories and searches need the kit
  const firstPage = url.pathname === BOARD_API && [...url.searchParams.keys()].every((k) => k === "limit");
  if (firstPage) {
    event.respondWith((async () => {
      try {
        const res = await fetch(req);
        if (res.ok) {
          const cache = await caches.open(DATA);
          await cache.put(BOARD_API, await stamped(res));
        } else if (res.status === 401) {
          await caches.delete(DATA); // signed out (or expired): the copy goes too; sign-out itself: common.js
        }
        return res;
      } catch (e) {
        const cached = await (await caches.open(DATA)).match(BOARD_API);
        if (cached) return markStale(cached);
        return new Response(JSON.stringify({ error: "The kit cannot be reached and no board was kept.", status: 503 }),
          { status: 503, headers: { "Content-Type": "application/json" } });
      }
    })());
    return;
  }

  if (req.mode === "navigate") {
    event.respondWith((async () => {
      try {
        const res = await fetch(req);
        if (url.pathname === "/" && res.ok && !res.redirected) {
          const cache = await caches.open(SHELL);
          await cache.put("/", res.clone());
          event.waitUntil(keepShells(cache));
        }
        return res;
      } catch (e) {
        return offlinePage(url); // kit unreachable
      }
    })());
    return;
  }

  if (url.pathname.startsWith("/static/") || url.pathname === "/manifest.webmanifest") {
    event.respondWith((async () => {
      const cache = await caches.open(SHELL);
      try {
        const res = await fetch(req);
        if (res.ok) await cache.put(req, res.clone());
        return res;
      } catch (e) {
        const cached = await cache.match(req, { ignoreSearch: true });
        if (cached) return cached;
        throw e;
      }
    })());
  }
});
