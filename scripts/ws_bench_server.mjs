#!/usr/bin/env node
// A minimal Node.js broadcast server on the npm `ws` package for the sync benchmark
// (scripts/bench-ws.sh): the same protocol as scripts/ws_bench_server.py. `hello` on connect,
// `publish` -> `ack` to the publisher and an `event` to every other connection, `subscribe`
// with an empty list to stop receiving. No auth, no persistence: what people deploy for this job.
//
// `ws` is resolved through NODE_PATH (bench-ws.sh installs the locked version from
// scripts/ws-bench-node/ under target/), so the repo holds no node_modules.
import { createRequire } from "node:module";
import { parseArgs } from "node:util";

const require = createRequire(import.meta.url);
const { WebSocketServer, WebSocket } = require("ws");

const { values } = parseArgs({ options: { port: { type: "string" } } });
const port = Number.parseInt(values.port ?? "", 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error("usage: ws_bench_server.mjs --port PORT");
  process.exit(2);
}

const receivers = new Set();
let seq = 0;

const wss = new WebSocketServer({
  host: "127.0.0.1",
  port,
  backlog: 4096,
  perMessageDeflate: false,
  maxPayload: 256 * 1024,
});

wss.on("connection", (ws) => {
  receivers.add(ws);
  ws.send(JSON.stringify({ type: "hello", deviceId: null, seq }));
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    let frame;
    try {
      frame = JSON.parse(data.toString());
    } catch {
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    if (frame.type === "publish") {
      seq += 1;
      const event = JSON.stringify({
        type: "event",
        seq,
        topic: frame.topic ?? null,
        ts: new Date().toISOString(),
        data: frame.data ?? {},
      });
      // Encoded once for everyone, as websockets.broadcast does on the Python side.
      const bytes = Buffer.from(event);
      for (const r of receivers) {
        if (r !== ws && r.readyState === WebSocket.OPEN) r.send(bytes, { binary: false });
      }
      ws.send(JSON.stringify({ type: "ack", id: frame.id ?? null, seq }));
    } else if (frame.type === "subscribe") {
      if (Array.isArray(frame.topics) && frame.topics.length === 0) receivers.delete(ws);
      else receivers.add(ws);
    }
  });
  ws.on("close", () => receivers.delete(ws));
  ws.on("error", () => receivers.delete(ws));
});

process.on("SIGTERM", () => process.exit(0));
