// The activity page follows door decisions live (access.granted / access.denied).
"use strict";
(function () {
  const tbody = document.getElementById("activity-rows");
  if (!tbody) return;
  const empty = document.getElementById("no-activity");
  const liveState = document.getElementById("live-state");
  const MAX_ROWS = 200;
  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text || "";
    return td;
  }
  function code(text) {
    const c = document.createElement("code");
    c.className = "muted";
    c.textContent = text || "";
    return c;
  }
  function add(f) {
    if (f.topic !== "access.granted" && f.topic !== "access.denied") return;
    if (tbody.querySelector('tr[data-seq="' + f.seq + '"]')) return;
    const d = f.data || {};
    const tr = document.createElement("tr");
    tr.dataset.seq = String(f.seq);
    tr.className = f.topic === "access.granted" ? "granted" : "denied";
    const time = document.createElement("td");
    const t = document.createElement("time");
    t.textContent = f.ts;
    t.setAttribute("datetime", f.ts);
    time.appendChild(t);
    const device = cell(d.deviceName);
    if (d.deviceId) {
      device.appendChild(document.createElement("br"));
      device.appendChild(code(d.deviceId));
    }
    const peer = document.createElement("td");
    peer.appendChild(code(d.peer));
    tr.append(time, cell(d.reason, "reason"), device, cell(d.endpoint), peer);
    tbody.insertBefore(tr, tbody.firstChild);
    while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(tbody.rows.length - 1);
    if (empty) empty.hidden = true;
    if (window.latchkeyTimes) window.latchkeyTimes(tr);
  }
  window.latchkeyLive(["access.*"], add, function (s) {
    if (liveState) liveState.textContent = s === "live" ? "Live." : "Reconnecting…";
  });
})();
