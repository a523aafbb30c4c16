#!/usr/bin/env python3
"""A minimal Python `websockets` broadcast server for the sync benchmark (scripts/bench-ws.sh).

It speaks just enough of latchkey's /ws frames for the load tool: `hello` on connect,
`publish` -> `ack` to the publisher and an `event` to every other connection, and
`subscribe` with an empty list to stop receiving. No auth, no persistence: what people
write instead of a gateway.
"""
import argparse
import asyncio
import datetime
import json

from websockets.asyncio.server import broadcast, serve

receivers = set()
seq = 0


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def handler(ws):
    global seq
    receivers.add(ws)
    try:
        await ws.send(json.dumps({"type": "hello", "deviceId": None, "seq": seq}))
        async for msg in ws:
            try:
                frame = json.loads(msg)
            except ValueError:
                continue
            kind = frame.get("type")
            if kind == "publish":
                seq += 1
                event = json.dumps({
                    "type": "event",
                    "seq": seq,
                    "topic": frame.get("topic"),
                    "ts": now_rfc3339(),
                    "data": frame.get("data", {}),
                })
                broadcast([r for r in receivers if r is not ws], event)
                await ws.send(json.dumps({"type": "ack", "id": frame.get("id"), "seq": seq}))
            elif kind == "subscribe":
                if frame.get("topics") == []:
                    receivers.discard(ws)
                else:
                    receivers.add(ws)
    finally:
        receivers.discard(ws)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    async with serve(handler, "127.0.0.1", args.port, compression=None, max_size=256 * 1024, backlog=4096):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main())
