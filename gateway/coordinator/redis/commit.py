"""Group commit of log appends: appends go to Redis together (docs/cluster.md, step 2a).

`append` queues the entry and waits. A lone append leaves at the end of its loop turn; one
that comes within `COMMIT_INTERVAL_S` of the last commit waits for the interval's end, and
everything queued by then leaves together, as one `append_batch.lua` call per hash slot (a
conversation's keys share one; on a standalone Redis every slot is on the one server, so the
whole batch is one call). So a node under load makes at most one call per interval whatever
its message rate, and a lone message waits for nothing. The script returns each append's
seq, duplicate flag and holders version, in order, and each waiting caller gets its own: the
sender's ack still waits for Redis's reply, so an acked message is in Redis. Calls for
different batches may be in flight at once; one sender's next message to a conversation is
never queued before its previous one to it has its ack (the dispatcher's lanes, docs/hub.md
step 6b), so a sender's order is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import ResponseError

from ..base import StaleState, Unavailable, idempotency_key
from .errors import answer_waiters
from .pipe import Script

# One pending append: its three keys, its client-id key ('' for none), its body, the state version
# it requires ('' for none), and the future its caller waits on.
_Pending = tuple[list[str], str, bytes, str, "asyncio.Future[tuple[int, bool, int]]"]


# At most one commit per interval (seconds). 1 ms: at 10,000 messages a second ten share a
# call, and the wait adds at most 1 ms to an ack where the p99 target is 10 ms.
COMMIT_INTERVAL_S = 0.001


# How long a batch waits for the AOF fsync before its senders are told `unavailable` (ms); under
# the pipes' 5 s silence limit, and past `appendfsync everysec`'s one second.
AOF_WAIT_MS = 2000


async def on_disk_calls(script: Script, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
    """The append script once per (keys, args) in `calls` (batches whose keys are all on one
    server), then one `WAITAOF 1 0` on that connection: the replies, in order (an exception in
    place of a batch whose script failed), once the master's AOF has them all on disk. Raises
    Unavailable if the fsync did not come within AOF_WAIT_MS, or the server refused WAITAOF (its
    AOF turned off since the start): the entries are in Redis, unacked, and a retry with the same
    ids is answered as a duplicate, after its own wait."""
    try:
        replies, (local, _replicas) = await script.many_then(calls, ("WAITAOF", 1, 0, AOF_WAIT_MS))
    except ResponseError as e:  # WAITAOF refused: not a bug of ours, and nothing is known on disk
        raise Unavailable(f"redis refused WAITAOF: {e}") from None
    if int(local) < 1:
        raise Unavailable(f"redis did not write the entries to its AOF within {AOF_WAIT_MS} ms (WAITAOF)")
    return replies


class GroupCommit:
    """Batches `append`s per commit interval; `call(keys, args)` is the script call for one slot's batch."""

    def __init__(self, call: Callable[[list[str], list[Any]], Any], keep: int, slot_of: Callable[[str], int] | None,
                 stats: dict[str, int], interval_s: float = COMMIT_INTERVAL_S,
                 on_disk: tuple[Callable[[list[tuple[list[str], list[Any]]]], Any], Callable[[str], Any]] | None = None):
        """`call(keys, args)`: the script call for one slot's batch. `on_disk`: (`calls`, `server_of`)
        where every ack waits for the AOF (`redis_ack = "aof"`): `calls(batches)` runs the batches
        of one server and one WAITAOF after them (`on_disk_calls`), `server_of(key)` names a key's
        server. Then one commit is in flight at a time (a WAITAOF blocks its connection: batches
        sent behind it would each wait for an fsync of their own), and every batch writes, so the
        wait covers its duplicates' first appends too, whichever connection wrote them
        (docs/cluster.md, step 2d)."""
        self._call = call  # (keys, args) -> awaitable flat [seq, dup, ...]
        self._on_disk = on_disk
        self._in_flight = 0
        self._held = False  # a commit came due while one was in flight (on_disk)
        self._keep = keep
        self._slot_of = slot_of  # None: one server holds every slot
        self._pending: list[_Pending] = []
        self._scheduled = False
        self._interval = interval_s
        self._last = -interval_s  # loop time of the last commit
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()  # kept: asking costs a getpid() system call on 3.11
        self.stats = stats  # the coordinator's: commit_batches, commit_appends
        stats.setdefault("commit_batches", 0)
        stats.setdefault("commit_appends", 0)

    async def append(self, keys: list[str], sender: str, client_id: str | None, body: dict[str, Any],
                     if_version: int | None = None) -> tuple[int, bool, int]:
        """(seq, duplicate, holders version) once Redis has the entry; StaleState if `if_version` is not the state's."""
        loop = self._loop
        fut: asyncio.Future[tuple[int, bool, int]] = loop.create_future()
        cid = "" if client_id is None else idempotency_key(sender, client_id)
        self._pending.append((keys, cid, orjson.dumps(body), "" if if_version is None else str(if_version), fut))
        if not self._scheduled:
            self._scheduled = True
            wait = self._last + self._interval - loop.time()
            if wait > 0:
                self._timer = loop.call_later(wait, self._commit)
            else:
                loop.call_soon(self._commit)
        return await fut

    def flush(self) -> None:
        """Send what waits for the interval's end now (the node is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._commit()

    def _commit(self) -> None:
        self._scheduled = False
        self._timer = None
        if self._on_disk and self._in_flight:
            self._held = True  # leaves when the batch in flight is answered, with what queues meanwhile
            return
        self._last = self._loop.time()
        pending, self._pending = self._pending, []
        groups: dict[int, list[_Pending]] = {}
        for p in pending:
            groups.setdefault(self._slot_of(p[0][0]) if self._slot_of else 0, []).append(p)
        if self._on_disk is None:
            for batch in groups.values():
                self._start(self._run(batch))
            return
        by_server: dict[Any, list[list[_Pending]]] = {}
        server_of = self._on_disk[1]
        for batch in groups.values():
            by_server.setdefault(server_of(batch[0][0][0]), []).append(batch)
        for batches in by_server.values():
            self._start(self._run_on_disk(batches))

    def _start(self, coro: Any) -> None:
        self._in_flight += 1
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        if self._held and not self._in_flight:
            self._held = False
            self._commit()

    def _call_args(self, batch: list[_Pending]) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = [self._keep, "" if self._on_disk is None else "1"]
        for k, cid, body, version, _ in batch:
            keys += k
            args += [cid, body, version]
        return keys, args

    async def _run(self, batch: list[_Pending]) -> None:
        ok, flat = await answer_waiters([fut for *_, fut in batch], self._call(*self._call_args(batch)))
        if ok:
            self._answer(batch, flat)

    async def _run_on_disk(self, batches: list[list[_Pending]]) -> None:
        assert self._on_disk is not None
        calls = [self._call_args(b) for b in batches]
        ok, replies = await answer_waiters([fut for b in batches for *_, fut in b], self._on_disk[0](calls))
        if not ok:
            return
        for batch, flat in zip(batches, replies, strict=True):
            if isinstance(flat, BaseException):  # that batch's script failed: it alone
                await answer_waiters([fut for *_, fut in batch], _raise(flat))
            else:
                self._answer(batch, flat)

    def _answer(self, batch: list[_Pending], flat: list[Any]) -> None:
        self.stats["commit_batches"] += 1
        self.stats["commit_appends"] += len(batch)
        for i, (*_, fut) in enumerate(batch):
            seq, dup, hv = int(flat[3 * i]), int(flat[3 * i + 1]), int(flat[3 * i + 2])
            if fut.done():
                continue
            if seq == -2:
                fut.set_exception(RuntimeError("the append failed inside Redis (append_batch.lua)"))
            elif seq < 0:
                fut.set_exception(StaleState(f"the conversation's state is at version {dup}"))
            else:
                fut.set_result((seq, bool(dup), hv))


async def _raise(e: BaseException) -> Any:
    raise e
