// The pairing page: countdown to the token's expiry, and "paired: NAME" the moment a phone
// redeems this page's token (pushed over the WebSocket, no reload).
"use strict";
(function () {
  const card = document.getElementById("pair");
  if (!card) return;
  const tokenId = Number(card.dataset.tokenId);
  const expires = Number(card.dataset.expires);
  // Use the server's remaining lifetime, so a skewed browser clock does not matter.
  const deadline = Date.now() + Number(card.dataset.ttl) * 1000;
  const status = document.getElementById("pair-status");
  const countdown = document.getElementById("countdown");
  let done = false;
  function tick() {
    if (done) return;
    const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
    const m = Math.floor(left / 60), s = left % 60;
    countdown.textContent = m + ":" + String(s).padStart(2, "0");
    if (left === 0) {
      done = true;
      card.classList.add("expired");
      status.textContent = "This code has expired. Press “New code”.";
      status.className = "status expired";
      return;
    }
    setTimeout(tick, 250);
  }
  tick();
  window.latchkeyLive(["device.paired"], function (ev) {
    if (ev.topic !== "device.paired" || !ev.data || ev.data.pairTokenId !== tokenId) return;
    done = true;
    card.classList.add("done");
    status.textContent = "paired: " + ev.data.name;
    status.className = "status paired";
    countdown.textContent = "used";
  });
  void expires;
})();
