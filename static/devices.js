// The device list follows pairings and revocations live.
"use strict";
(function () {
  const table = document.getElementById("devices");
  if (!table) return;
  const csrf = table.dataset.csrf;
  const tbody = table.querySelector("tbody");
  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  }
  function render(devices) {
    tbody.replaceChildren();
    for (const d of devices) {
      const tr = document.createElement("tr");
      tr.dataset.deviceId = d.deviceId;
      if (d.revoked) tr.className = "revoked";
      const name = cell(d.name);
      name.appendChild(document.createElement("br"));
      const code = document.createElement("code");
      code.className = "muted";
      code.textContent = d.deviceId;
      name.appendChild(code);
      tr.append(name, cell(d.type), cell(d.pairedAt), cell(d.lastSeen || "never", "last-seen"),
        cell(d.revoked ? "revoked" : "active", "state"));
      const act = document.createElement("td");
      if (!d.revoked) {
        const f = document.createElement("form");
        f.method = "post";
        f.action = "/devices/" + encodeURIComponent(d.deviceId) + "/revoke";
        f.className = "inline revoke";
        const h = document.createElement("input");
        h.type = "hidden"; h.name = "csrf"; h.value = csrf;
        const b = document.createElement("button");
        b.type = "submit"; b.className = "danger"; b.textContent = "Revoke";
        f.append(h, b);
        act.appendChild(f);
      }
      tr.appendChild(act);
      tbody.appendChild(tr);
    }
    const empty = document.getElementById("no-devices");
    if (empty) empty.hidden = devices.length > 0;
  }
  function refresh() {
    fetch("/api/devices", { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((j) => render(j.devices))
      .catch(() => {});
  }
  window.latchkeyLive(["device.*"], refresh);
})();
