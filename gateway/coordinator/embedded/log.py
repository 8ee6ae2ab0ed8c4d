"""ConversationLog in one process, with its synchronous fast path (`SyncLog`, docs/hub.md 6a).

Each conversation's entries are kept encoded (JSON bytes), at most `history_keep` of them;
the client-id map is trimmed with the log, so a retry is answered exactly while its entry is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from ..base import StaleState, idempotency_key
from ..ports import ConversationLog
from .entries import Entries
from .store import Store

# msgspec, not orjson, writes the entries kept: orjson 3.13's bytes keep the 4 KiB buffer they were
# written into (tracemalloc: 4,098 bytes per 117-byte entry), so each kept entry cost 4 KiB
# (bench/store_memory.py: about 5 KB of RSS per message before, docs/store.md).
_pack = msgspec.json.Encoder().encode
_unpack = orjson.loads


class _Log:
    # Nothing here is traversed by the garbage collector: the entries are packed in a bytearray
    # (entries.py) and `ids` is a dict of str -> int, which CPython never tracks. A node holding
    # millions of entries doesn't pay for them in every full collection (relay p99).
    __slots__ = ("entries", "first", "ids", "nbytes", "pending")

    def __init__(self) -> None:
        self.entries = Entries()
        self.nbytes = 0  # bytes of `entries`: what the memory budget counts
        self.first = 1  # seq of entries[0]
        # idempotency_key(sender, client id) -> seq, in append order; trimmed behind the log (`_trim_ids`)
        self.ids: dict[str, int] = {}
        self.pending = 0  # with a store: the newest entries not committed yet (reads don't see them)

    def visible(self) -> int:
        """How many of `entries` a read may return: all but the uncommitted tail."""
        return max(len(self.entries) - self.pending, 0)


class _Appended:
    """An entry waiting for the store's commit (store.py's `PendingEntry`): settled, or taken back."""

    __slots__ = ("cid", "log", "owner", "seq")

    def __init__(self, log: _Log, seq: int, cid: str | None, owner: MemoryLog):
        self.log, self.seq, self.cid, self.owner = log, seq, cid, owner

    def settled(self) -> None:
        self.log.pending -= 1

    def undo(self) -> None:  # the commit failed: the entry was never stored
        log = self.log
        log.pending -= 1
        if log.entries and log.first + len(log.entries) - 1 == self.seq:
            freed = log.entries.pop()
            log.nbytes -= freed
            self.owner._log_bytes -= freed  # the node's total too, or the budget drifts up with every failed commit
        if self.cid is not None and log.ids.get(self.cid) == self.seq:
            del log.ids[self.cid]


class MemoryLog(ConversationLog):
    """The logs, by (tenant, conversation); a conversation's log is made when it is created."""

    _keep: int
    _convs: dict[tuple[str, str], Any]  # the conversations' state (conversations.py), for `if_version`
    _store: Store | None  # the node's database (store.py); None: memory only

    def _init_logs(self, history_keep: int, budget_bytes: int = 0) -> None:
        self._keep = history_keep
        self._logs: dict[tuple[str, str], _Log] = {}
        # With a store, the memory budget (0: no limit; docs/store.md step 9): three quarters for the
        # bytes of entries kept over all logs, past which the oldest conversations' committed entries
        # leave memory (`_shed_over_budget`); a quarter for closed conversations kept for retries
        # (conversations.py `evict_closed`). `_log_bytes` is the sum of the logs' `nbytes`.
        budget = budget_bytes if self._store is not None else 0
        self._budget = budget * 3 // 4
        self._closed_budget = budget // 4
        self._log_bytes = 0
        self.budget_sheds = 0
        # SyncLog: with a store, call fn(*args) once the entries appended so far are on disk
        # (failed(e) if they can't be); None without one. An attribute, not a property: `msg` reads it.
        self.when_durable: Callable[[Callable[..., None], tuple[Any, ...], Callable[[Exception], None]], None] | None = \
            self._store.when_durable if self._store is not None else None

    def _new_log(self, key: tuple[str, str]) -> None:
        self._logs[key] = _Log()

    def _forget_log(self, key: tuple[str, str]) -> None:
        """A closed conversation's log leaves memory (with a store, which answers for it from now on)."""
        self._pop_log(key)

    def _pop_log(self, key: tuple[str, str]) -> None:
        log = self._logs.pop(key, None)
        if log is not None:
            self._log_bytes -= log.nbytes

    def _log(self, key: tuple[str, str]) -> _Log | None:
        """The log in memory; with a store, for a conversation that left memory (closed), an empty
        one going on after the stored seqs (not kept: reads of it go to the store)."""
        log = self._logs.get(key)
        if log is None and self._store is not None and self._store.has(*key):
            log = _Log()
            log.first = self._store.last_seq(*key) + 1
        return log

    def _shed_entries(self, key: tuple[str, str]) -> None:
        """A conversation closed (with a store): its entries leave memory now, reads of them go to the
        store; its client ids stay until it leaves memory (a retry still gets its ack)."""
        log = self._logs.get(key)
        if log is not None and log.entries:
            self._shed(log, len(log.entries))

    def _shed(self, log: _Log, n: int) -> None:
        """The oldest `n` entries leave memory (they are in the store; never the uncommitted tail)."""
        n = min(n, len(log.entries) - log.pending)
        if n == len(log.entries):
            freed = log.nbytes
            log.entries.clear()
        else:
            freed = 0
            for _ in range(n):
                freed += log.entries.popleft()
        log.first += n
        log.nbytes -= freed
        self._log_bytes -= freed

    def _shed_over_budget(self, target: int | None = None) -> None:
        """Over the budget: the committed entries of the oldest conversations (in the order they were
        made or read back) leave memory until the logs are under `target` bytes (90% of the budget);
        reads of them go to the store (read_after / read_before). Client ids stay (trimmed with
        `history_keep`)."""
        target = self._budget * 9 // 10 if target is None else target
        for log in self._logs.values():
            if self._log_bytes <= target:
                break
            if len(log.entries) > log.pending:
                self._shed(log, len(log.entries))
        self.budget_sheds += 1

    def _drop_closed_log(self, key: tuple[str, str]) -> None:
        if key not in self._convs:  # still closed: its entries are written, the store answers for them
            self._pop_log(key)

    def _restore_log(self, key: tuple[str, str], last_seq: int, kept: list[tuple[int, str, str | None, bytes]]) -> None:
        """A log as the store had it: its newest entries in memory, the seqs going on after `last_seq`."""
        log = self._logs[key] = _Log()
        log.first = kept[0][0] if kept else last_seq + 1
        for _seq, sender, cid, body in kept:
            log.entries.append(body)
            log.nbytes += len(body)
            self._log_bytes += len(body)
            if cid is not None:
                log.ids[idempotency_key(sender, cid)] = _seq

    async def append(self, tenant: str, conv_id: str, entry: dict[str, Any], client_id: str | None = None, *,
                     if_version: int | None = None) -> tuple[int, bool]:
        if if_version is not None:
            conv = self._convs.get((tenant, conv_id))
            if conv is not None and conv.version != if_version:
                raise StaleState(f"conversation {conv_id} is at version {conv.version}, not {if_version}")
        seq, dup, _ = self.append_now(tenant, conv_id, entry, client_id)
        if self._store is not None:
            fut = asyncio.get_running_loop().create_future()
            # The caller may be cancelled while it waits (a bot turn an agent took over): answer only a waiting future.
            self._store.when_durable(lambda: fut.done() or fut.set_result(None), (),
                                     lambda e: fut.done() or fut.set_exception(e))
            await fut
        return seq, dup

    async def seq_of(self, tenant: str, conv_id: str, sender: str, client_id: str) -> int | None:
        return self.seq_of_now(tenant, conv_id, sender, client_id)

    def seq_of_now(self, tenant: str, conv_id: str, sender: str, client_id: str) -> int | None:
        """The seq the log gave `sender`'s `client_id`, while its entry is among the newest `history_keep`."""
        log = self._logs.get((tenant, conv_id))
        if log is None:
            return None
        seq = log.ids.get(idempotency_key(sender, client_id))
        return seq if seq is not None and self._in_window(log, seq) else None

    def _in_window(self, log: _Log, seq: int) -> bool:
        """Is `seq` among the log's newest `history_keep`? (`ids` is trimmed lazily, in `append_now`; shedding
        for the memory budget moves `first` but not this window.)"""
        return seq > log.first + len(log.entries) - 1 - self._keep

    def append_now(self, tenant: str, conv_id: str, entry: dict[str, Any], client_id: str | None = None) -> tuple[int, bool, bytes]:
        """`append` without a coroutine, also returning the entry as stored (its JSON encoding), for the hub's inline path."""
        key = (tenant, conv_id)
        log = self._logs.get(key)
        if log is None:
            log = self._log(key)
            if log is None:
                raise KeyError(conv_id)
            # A conversation that left memory (closed): its log is in memory until this turn's
            # commit, so a second entry in the same turn gets the next seq.
            self._logs[key] = log
            closed = True
        else:
            closed = False
        cid = client_id
        if client_id is not None:
            sender = entry["from"]
            client_id = f"{len(sender)}:{sender}:{client_id}"  # idempotency_key, inlined (per message): ids are per sender
            seq = log.ids.get(client_id)
            if seq is not None and self._in_window(log, seq):
                return seq, True, b""
        ent = log.entries
        starts = ent.starts
        n = len(starts) - ent.head  # len(ent), without the method call (per message)
        seq = log.first + n
        entry["seq"] = seq
        packed = _pack(entry)
        size = len(packed)
        starts.append(len(ent.buf))  # ent.append(packed), inlined
        ent.buf += packed
        log.nbytes += size
        self._log_bytes += size
        if client_id is not None:
            log.ids[client_id] = seq
        if self._store is not None:
            log.pending += 1
            self._store.add_entry(tenant, conv_id, seq, entry.get("from", ""), cid, packed,
                                  _Appended(log, seq, client_id, self))
            if closed:
                self._store.when_durable(self._drop_closed_log, (key,), lambda _e: self._drop_closed_log(key))
        if n >= self._keep:
            while len(ent) > self._keep:
                freed = ent.popleft()
                log.nbytes -= freed
                self._log_bytes -= freed
                log.first += 1
        if len(log.ids) > 2 * self._keep:
            # Rebuilt, not popped from the front (a dict's front fills with dummies): once every
            # `history_keep` appends; until then `_in_window` hides the ids behind the window. Against
            # the window, not `first` (which shedding for the memory budget moves further).
            oldest = seq - self._keep
            log.ids = {k: s for k, s in log.ids.items() if s > oldest}
        if self._budget and self._log_bytes > self._budget:
            self._shed_over_budget()
        return seq, False, packed

    async def read_after(self, tenant: str, conv_id: str, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        log = self._log((tenant, conv_id))
        if log is None:
            return [], 1
        out: list[dict[str, Any]] = []
        if after + 1 < log.first and self._store is not None:  # older than memory keeps: from the store
            out = [_unpack(b) for b in self._store.read(tenant, conv_id, after, log.first, limit, newest=False)]
            after = log.first - 1
        start = max(after + 1 - log.first, 0)
        out += [_unpack(log.entries[i]) for i in range(start, min(start + limit - len(out), log.visible()))]
        return out, self._first(log)

    async def read_before(self, tenant: str, conv_id: str, before: int | None, limit: int) -> tuple[list[dict[str, Any]], int]:
        log = self._log((tenant, conv_id))
        if log is None:
            return [], 1
        end = log.visible() if before is None else max(min(before - log.first, log.visible()), 0)
        out = [_unpack(log.entries[i]) for i in range(max(end - limit, 0), end)]
        if len(out) < limit and self._store is not None and log.first > 1:
            top = log.first if before is None else min(before, log.first)
            out = [_unpack(b) for b in self._store.read(tenant, conv_id, None, top, limit - len(out), newest=True)] + out
        return out, self._first(log)

    def _first(self, log: _Log) -> int:
        """The first seq a read can return: everything is on disk with a store, else what memory keeps."""
        return 1 if self._store is not None else log.first

    async def last_seq(self, tenant: str, conv_id: str) -> int:
        """The last committed seq (an entry still being committed is not anybody's yet)."""
        log = self._log((tenant, conv_id))
        return log.first + log.visible() - 1 if log else 0
