// fieldkit service worker: keeps the app shell and the last-seen board, so a reload while
// the kit is briefly unreachable shows the last board marked stale instead of an error.
// Only the board is kept (it is what a triage team needs first); patient images never are.
const SHELL = "fieldkit-shell-v1";
const DATA = "fieldkit-data-v1";
const ASSETS = ["/static/css/app.css", "/static/js/theme.js", "/static/js/common.js", "/static/js/board.js", "/static/js/actions.js",
  "/static/js/start.js", "/static/js/scan.js", "/static/js/new_patient.js", "/static/js/patient.js", "/static/js/sync.js",
  "/static/js/device.js", "/static/icons/icon.svg", "/static/icons/icon-192.png", "/manifest.webmanifest",
  "/static/js/care.js"];
const BOARD_API = "/api/v1/ui/board";

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

  if (url.pathname === BOARD_API) {
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
          await (await caches.open(SHELL)).put("/", res.clone());
        }
        return res;
      } catch (e) {
        // kit unreachable: the last board page (its script then shows the kept board, stale)
        const cache = await caches.open(SHELL);
        const page = (await cache.match("/")) || null;
        if (page) return page;
        return new Response("<!doctype html><title>Kit unreachable</title><h1>The kit cannot be reached</h1>" +
          "<p>Check that this tablet is on the kit's Wi-Fi, then reload.</p>",
          { status: 503, headers: { "Content-Type": "text/html; charset=utf-8" } });
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
