// The node list follows node.* events live (online/offline, registered, renamed, revoked), and
// a freshly made provisioning token counts down to its expiry.
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
  function render(nodes) {
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
  function refresh() {
    fetch("/api/nodes", { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((j) => render(j.nodes))
      .catch(() => {});
  }
  window.latchkeyLive(["node.*"], refresh);
})();
