// Times in the viewer's own zone and relative ("3 minutes ago"). The server renders
// <time datetime="RFC 3339">…UTC…</time>; without script that UTC text stays.
"use strict";
(function () {
  const units = [["year", 31536000], ["month", 2592000], ["week", 604800], ["day", 86400],
                 ["hour", 3600], ["minute", 60], ["second", 1]];
  const rtf = window.Intl && Intl.RelativeTimeFormat
    ? new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" }) : null;
  function relative(d) {
    const s = Math.round((d.getTime() - Date.now()) / 1000);
    if (Math.abs(s) < 45) return "just now";
    for (const [unit, n] of units) {
      if (Math.abs(s) >= n) {
        const v = Math.round(s / n);
        if (rtf) return rtf.format(v, unit);
        return Math.abs(v) + " " + unit + (Math.abs(v) === 1 ? "" : "s") + (v < 0 ? " ago" : " from now");
      }
    }
    return "just now";
  }
  function render(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (t) {
      const d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      t.textContent = relative(d) + " · " + d.toLocaleString();
      t.title = d.toISOString();
      t.dataset.local = "1";
    });
  }
  // Pages that add rows live call this on them.
  window.latchkeyTimes = render;
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { render(); });
  } else {
    render();
  }
  setInterval(render, 30000);
})();
