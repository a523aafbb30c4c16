// Live updates for the admin pages over the gateway's WebSocket (cookie-authenticated).
// Reconnects with exponential backoff and jitter, and resumes from the last seen seq so a
// page that lost Wi-Fi for a moment misses nothing. `onEvent` also gets `reset` frames (the
// gateway no longer has what was missed): pages that keep state should refetch it then.
"use strict";
window.latchkeyLive = function (topics, onEvent, onState) {
  let since = null;
  let delay = 500;
  let ws = null;
  const report = (s) => { if (onState) onState(s); };
  const send = (f) => ws.send(JSON.stringify(f));
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + "/ws");
    ws.onopen = () => {
      delay = 500;
      send({ type: "subscribe", topics: topics });
      // Resume first thing: the replay then comes before any live event.
      if (since !== null) send({ type: "resume", since: since });
      report("live");
    };
    ws.onmessage = (m) => {
      let f;
      try { f = JSON.parse(m.data); } catch (_) { return; }
      if (f.type === "hello") {
        if (since === null) {
          since = f.seq;
          send({ type: "resume", since: since });
        }
      } else if (f.type === "reset") {
        since = f.seq;
        onEvent(f);
      } else if (f.type === "event") {
        if (since !== null && f.seq <= since) return;
        since = f.seq;
        onEvent(f);
      }
    };
    ws.onclose = (e) => {
      report("offline");
      // The admin session ended: reconnecting cannot help.
      if (e.code === 4401 || e.code === 4403) {
        location.assign("/login");
        return;
      }
      const wait = delay / 2 + Math.random() * delay;
      delay = Math.min(delay * 2, 30000);
      setTimeout(connect, wait);
    };
  }
  connect();
};
