// Tag scanning with the tablet camera, where the browser offers BarcodeDetector: the button
// shows only then; a code read fills the input and calls onCode (e.g. to look the tag up).
// Without a camera the tag is typed (a tag scanner that types and presses Enter works too).
export async function setupScan(button, video, input, onCode) {
  if (!button || !("BarcodeDetector" in window) || !navigator.mediaDevices) return;
  let formats = [];
  try { formats = await window.BarcodeDetector.getSupportedFormats(); } catch (e) { return; }
  if (!formats.length) return;
  button.hidden = false;
  button.addEventListener("click", async () => {
    let stream;
    try { stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } }); }
    catch (e) { button.textContent = "Camera not available: type the tag"; return; }
    const detector = new window.BarcodeDetector({ formats });
    video.srcObject = stream; video.hidden = false; await video.play();
    const started = Date.now();
    const stop = () => { stream.getTracks().forEach((t) => t.stop()); video.hidden = true; };
    const tick = async () => {
      if (Date.now() - started > 30000) { stop(); return; }
      try {
        const codes = await detector.detect(video);
        if (codes.length) {
          input.value = codes[0].rawValue.slice(0, 64);
          stop();
          if (onCode) onCode(input.value);
          return;
        }
      } catch (e) { stop(); return; }
      requestAnimationFrame(tick);
    };
    tick();
  });
}
