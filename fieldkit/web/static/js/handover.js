// The printable handover list: its one button prints (the CSP allows no inline handler).
document.getElementById("print-btn").addEventListener("click", () => window.print());
