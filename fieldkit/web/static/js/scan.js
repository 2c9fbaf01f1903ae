// Tag scanning with the tablet camera: the browser's own BarcodeDetector where it has one,
// else the vendored ZXing reader (WebAssembly, served by the kit: no CDN). The button shows
// wherever there is a camera API; a code read fills the input and calls onCode (e.g. to look
// the tag up or move on). Without a camera the tag is typed (a tag scanner that types and
// presses Enter works too).
import { t } from "./i18n.js";

const VENDOR = "/static/vendor/barcode-detector/";
// the symbologies triage tags carry; fewer formats, faster reads on a slow tablet
const WANTED = ["qr_code", "code_128", "code_39", "code_93", "codabar", "ean_13", "ean_8", "itf", "upc_a",
  "data_matrix", "pdf417", "aztec"];

let polyfill = null;

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src;
    s.onload = resolve;
    s.onerror = () => reject(new Error(t("the barcode reader could not be loaded")));
    document.head.appendChild(s);
  });
}

// The detector class: native, or the ponyfill with its WebAssembly from the kit (fetched
// and compiled once, ahead of the first tap, so the first scan is not slowed).
async function detectorClass() {
  if ("BarcodeDetector" in window) {
    try {
      if ((await window.BarcodeDetector.getSupportedFormats()).length) return window.BarcodeDetector;
    } catch (e) { /* no usable native reader: the polyfill below */ }
  }
  if (!polyfill) {
    polyfill = (async () => {
      await loadScript(VENDOR + "ponyfill.js");
      const api = window.BarcodeDetectionAPI;
      await api.prepareZXingModule({
        overrides: { locateFile: (path, prefix) => (path.endsWith(".wasm") ? VENDOR + path : prefix + path) },
        fireImmediately: true,
      });
      return api.BarcodeDetector;
    })();
  }
  return polyfill;
}

// opts.preload: fetch and compile the reader now (the New-patient page, where a scan is the
// first thing done); elsewhere it is loaded at the first tap.
export async function setupScan(button, video, input, onCode, opts = {}) {
  if (!button || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) return;
  if (!("BarcodeDetector" in window) && !("WebAssembly" in window)) return; // no reader: the tag is typed
  let reader = null;
  const ready = () => {
    if (!reader) {
      reader = (async () => {
        const Detector = await detectorClass();
        const supported = await Detector.getSupportedFormats();
        const formats = WANTED.filter((f) => supported.includes(f));
        if (!formats.length) throw new Error(t("no barcode format"));
        button.dataset.reader = Detector === window.BarcodeDetector ? "native" : "zxing";
        return { Detector, formats };
      })();
    }
    return reader;
  };
  button.hidden = false;
  if (opts.preload) ready().catch(() => {});
  let scanning = false;
  button.addEventListener("click", async () => {
    if (scanning) return;
    let got;
    try { got = await ready(); }
    catch (e) { button.textContent = t("Scanner not available: type the tag"); return; }
    let stream;
    try { stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } }); }
    catch (e) { button.textContent = t("Camera not available: type the tag"); return; }
    scanning = true;
    const detector = new got.Detector({ formats: got.formats });
    video.srcObject = stream; video.hidden = false;
    try { await video.play(); } catch (e) { /* frames still come */ }
    const started = Date.now();
    const stop = () => { scanning = false; stream.getTracks().forEach((track) => track.stop()); video.srcObject = null; video.hidden = true; };
    const tick = async () => {
      if (Date.now() - started > 30000) { stop(); return; } // bounded: 30 s, then type the tag
      try {
        const codes = video.readyState >= 2 ? await detector.detect(video) : [];
        if (codes.length) {
          input.value = codes[0].rawValue.slice(0, 64);
          stop();
          input.dispatchEvent(new Event("input", { bubbles: true }));
          if (onCode) onCode(input.value);
          return;
        }
      } catch (e) { stop(); return; }
      requestAnimationFrame(tick);
    };
    tick();
  });
}
