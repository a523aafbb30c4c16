// Live updates for the admin pages over the gateway's WebSocket (cookie-authenticated).
// Reconnects with exponential backoff and jitter, and resumes from the last seen seq so a
// page that lost Wi-Fi for a moment misses nothing.
"use strict";
window.latchkeyLive = function (topics, onEvent, onState) {
  let since = null;
  let delay = 500;
  let ws = null;
  const report = (s) => { if (onState) onState(s); };
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + "/ws");
    ws.onopen = () => {
      delay = 500;
      ws.send(JSON.stringify({ type: "subscribe", topics: topics }));
      if (since !== null) ws.send(JSON.stringify({ type: "resume", since: since }));
      report("live");
    };
    ws.onmessage = (m) => {
      let f;
      try { f = JSON.parse(m.data); } catch (_) { return; }
      if (f.type === "hello" && since === null) since = f.seq;
      else if (f.type === "reset") since = f.seq;
      else if (f.type === "event") {
        if (since !== null && f.seq <= since) return;
        since = f.seq;
        onEvent(f);
      }
    };
    ws.onclose = () => {
      report("offline");
      const wait = delay / 2 + Math.random() * delay;
      delay = Math.min(delay * 2, 30000);
      setTimeout(connect, wait);
    };
  }
  connect();
};
