// The node list follows node.* events live (online/offline, registered, renamed, revoked), a
// vehicle's keys follow device.tool events, and a freshly made provisioning token counts down
// to its expiry.
"use strict";
(function () {
  const card = document.getElementById("node-token");
  if (card) {
    // The server's remaining lifetime, so a skewed browser clock does not matter.
    const deadline = Date.now() + Number(card.dataset.ttl) * 1000;
    const countdown = document.getElementById("countdown");
    const status = document.getElementById("token-status");
    const tick = function () {
      if (card.classList.contains("done")) return;
      const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
      countdown.textContent = Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
      if (left === 0) {
        card.classList.add("expired");
        status.textContent = "This token has expired. Add the node again for a new one.";
        status.className = "status expired";
        return;
      }
      setTimeout(tick, 250);
    };
    tick();
  }
  const table = document.getElementById("nodes");
  if (!table) return;
  const csrf = table.dataset.csrf;
  const tbody = table.querySelector("tbody");
  const dash = (v) => (v === null || v === undefined || v === "" ? "–" : v);
  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  }
  function input(name, value, max, label) {
    const i = document.createElement("input");
    i.type = "text"; i.name = name; i.value = value || ""; i.maxLength = max;
    i.setAttribute("aria-label", label);
    return i;
  }
  function form(action, cls, fields, text, danger) {
    const f = document.createElement("form");
    f.method = "post"; f.action = action; f.className = "inline " + cls;
    const h = document.createElement("input");
    h.type = "hidden"; h.name = "csrf"; h.value = csrf;
    const b = document.createElement("button");
    b.type = "submit"; b.textContent = text;
    if (danger) b.className = "danger";
    f.append(h, ...fields, b);
    return f;
  }
  function status(n) {
    if (n.state !== "registered") return n.state;
    return n.online ? "online" : "offline";
  }
  // A vehicle's live keys, each with its revoke form, in a row under the vehicle's.
  function keysRow(n, keys) {
    const tr = document.createElement("tr");
    tr.className = "vehicle-keys";
    tr.dataset.vehicleId = n.node_id;
    const td = document.createElement("td");
    td.colSpan = 8;
    const count = document.createElement("span");
    count.className = "key-count";
    count.textContent = String(keys.length);
    td.append(count, " live vehicle key" + (keys.length === 1 ? "" : "s"));
    if (keys.length > 0) {
      const ul = document.createElement("ul");
      ul.className = "keys";
      for (const k of keys) {
        const li = document.createElement("li");
        li.dataset.keyId = k.keyId;
        const code = document.createElement("code");
        code.className = "muted";
        code.textContent = k.keyId;
        const until = document.createElement("time");
        until.textContent = k.expiresOn;
        li.append(k.deviceName + " ", code, ", until ", until,
          form("/nodes/keys/" + encodeURIComponent(k.keyId) + "/revoke", "revoke-key", [], "Revoke key", true));
        ul.appendChild(li);
      }
      td.appendChild(ul);
    }
    tr.appendChild(td);
    return tr;
  }
  function render(nodes, keys) {
    tbody.replaceChildren();
    for (const n of nodes) {
      const tr = document.createElement("tr");
      tr.dataset.nodeId = n.node_id;
      tr.className = status(n);
      const name = cell(n.name || n.room || n.node_id);
      name.appendChild(document.createElement("br"));
      const code = document.createElement("code");
      code.className = "muted";
      code.textContent = n.node_id;
      name.appendChild(code);
      const ep = document.createElement("td");
      if (n.endpoint) {
        const c = document.createElement("code");
        c.textContent = n.endpoint;
        ep.appendChild(c);
      } else {
        ep.textContent = "–";
      }
      tr.append(name, cell(dash(n.kind), "kind"), cell(n.room), cell(dash(n.firmware), "firmware"), ep,
        cell(status(n), "state"), cell(n.last_seen || "never", "last-seen"));
      const act = document.createElement("td");
      if (!n.revoked) {
        const id = encodeURIComponent(n.node_id);
        const fields = [input("name", n.name, 64, "Name"), input("room", n.room, 64, "Room")];
        if (n.endpoint) fields.push(input("endpoint", n.endpoint, 32, "Endpoint id"));
        act.append(form("/nodes/" + id + "/rename", "rename", fields, "Rename", false),
          form("/nodes/" + id + "/revoke", "revoke", [], "Revoke", true));
      }
      tr.appendChild(act);
      tbody.appendChild(tr);
      if (n.kind === "vehicle" && !n.revoked) {
        tbody.appendChild(keysRow(n, keys.filter((k) => k.vehicleId === n.node_id)));
      }
      if (card && card.dataset.nodeId === n.node_id && n.state !== "pending") {
        card.classList.add("done");
        const s = document.getElementById("token-status");
        s.textContent = "registered: " + (n.name || n.room || n.node_id) + (n.online ? " (online)" : "");
        s.className = "status paired";
        document.getElementById("countdown").textContent = "used";
      }
    }
    const empty = document.getElementById("no-nodes");
    if (empty) empty.hidden = nodes.length > 0;
  }
  const get = (url) => fetch(url, { credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)));
  function refresh() {
    Promise.all([get("/api/nodes"), get("/api/vehicle-keys")])
      .then(([n, k]) => render(n.nodes, k.keys))
      .catch(() => {});
  }
  window.latchkeyLive(["node.*", "device.tool"], refresh);
})();
