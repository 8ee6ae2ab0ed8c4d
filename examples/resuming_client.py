"""A client that survives a dropped connection without losing or repeating a message.

    ./dev serve                                         # in another terminal
    python examples/resuming_client.py --http http://127.0.0.1:8080

What every chat client has to get right (docs/protocol.md, "Delivery guarantees"):
- each message gets a client id once, and a retry reuses it, so the server acks the
  retry with the first seq (`dup: true`) instead of storing it twice;
- the client remembers the last seq it has seen per conversation and, after a
  reconnect, sends `resume {after: last}`: the server replays what was missed, in
  order, then live traffic follows;
- a message is only "sent" once its `ack` came back; anything unacked is sent again,
  with the same id, after the reconnect.
The script sends messages, cuts its own connection in the middle (no close frame, as a
lost network would), reconnects with a fresh token, resumes and retries, then checks
that the conversation it saw is seq 1, 2, 3, ... with no gap and no repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.parse
import urllib.request
import uuid

import websockets


def dev_token(http: str, sub: str) -> str:
    q = urllib.parse.urlencode({"role": "visitor", "sub": sub})
    with urllib.request.urlopen(f"{http}/api/dev/token?{q}", timeout=10) as r:
        return json.load(r)["token"]


class Session:
    """One visitor across connections: what it has seen and what is still unacked."""

    def __init__(self, http: str, ws_url: str, sub: str):
        self.http, self.ws_url, self.sub = http, ws_url, sub
        self.conv: str | None = None
        self.last = 0                       # last seq seen in order
        self.seen: list[int] = []           # every seq received, in arrival order
        self.unacked: dict[str, str] = {}   # client id -> text, until acked
        self.acked: dict[str, int] = {}     # client id -> seq
        self.ws = None
        self.resumed = asyncio.Event()

    async def connect(self) -> None:
        self.ws = await websockets.connect(f"{self.ws_url}?v=1&token={dev_token(self.http, self.sub)}")
        self.resumed.clear()
        first = await self.envelopes()
        assert first[0]["t"] == "welcome", first
        for env in first[1:]:
            self.handle(env)
        if self.conv is None:
            await self.ws.send(json.dumps({"t": "open", "rid": "open"}))
        else:
            await self.ws.send(json.dumps({"t": "resume", "conv": self.conv, "after": self.last, "rid": "resume"}))
            for cid, text in self.unacked.items():  # same ids: the server recognises what it stored
                await self.send_msg(cid, text)

    async def envelopes(self) -> list[dict]:
        """The envelopes of the next frame (a frame may carry a batch), in order."""
        data = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        return data if isinstance(data, list) else [data]

    async def send_msg(self, cid: str, text: str) -> None:
        self.unacked[cid] = text
        await self.ws.send(json.dumps({"t": "msg", "conv": self.conv, "id": cid, "text": text}))

    def handle(self, env: dict) -> None:
        t = env.get("t")
        if t == "conv" and env.get("rid") == "open":
            self.conv = env["conv"]
        elif t == "ack":
            self.unacked.pop(env["id"], None)
            self.acked[env["id"]] = env["seq"]
        elif t in ("msg", "event") and env.get("conv") == self.conv:
            self.seen.append(env["seq"])
            self.last = max(self.last, env["seq"])
        elif t == "resumed":
            self.resumed.set()
        elif t == "gap":
            print(f"the log no longer reaches back: it restarts at {env['first']}")
        elif t == "error":
            raise RuntimeError(f"server error: {env}")

    async def pump(self, until) -> None:
        """Read envelopes until `until()` holds."""
        while not until():
            for env in await self.envelopes():
                self.handle(env)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--http", default="http://127.0.0.1:8080", help="the node's HTTP address (dev tokens, config)")
    ap.add_argument("--messages", type=int, default=20)
    args = ap.parse_args()
    with urllib.request.urlopen(f"{args.http}/api/config", timeout=10) as r:
        ws_url = json.load(r)["ws_url"]
    s = Session(args.http, ws_url, f"resumer-{uuid.uuid4().hex[:8]}")
    await s.connect()
    await s.pump(lambda: s.conv is not None)
    half = args.messages // 2
    for i in range(half):
        await s.send_msg(f"m-{i}", f"message {i}")
    await s.pump(lambda: len(s.acked) >= half // 2)   # some acked, some still in flight
    s.ws.transport.abort()                             # the network drops: no close frame
    print(f"connection lost with {len(s.acked)} acked, {len(s.unacked)} unacked")
    await s.connect()                                  # resume + retries with the same ids
    for i in range(half, args.messages):
        await s.send_msg(f"m-{i}", f"message {i}")
    await s.pump(lambda: s.resumed.is_set() and not s.unacked and s.last >= max(s.acked.values()))
    await s.ws.close()

    repeats = len(s.seen) - len(set(s.seen))
    contiguous = sorted(set(s.seen)) == list(range(1, s.last + 1))
    print(f"sent {args.messages}, acked {len(s.acked)}, saw seqs 1..{s.last}, repeats {repeats}, "
          f"{'no gap' if contiguous else 'GAP'}")
    ok = len(s.acked) == args.messages and repeats == 0 and contiguous
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
