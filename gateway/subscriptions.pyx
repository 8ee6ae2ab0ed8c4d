"""Which conversations a session receives live, and how far: the only writer of its cursors.

A session (gateway/session.py) keeps two slots this module owns:

- `sent`: conv -> the last seq sent on this session; a key means "subscribed". None until
  the session subscribes to anything, so an idle connection pays no dict.
- `syncing`: conv -> live entries held back while a replay of that conversation runs;
  None when no replay runs.

A session subscribes when it opens a conversation (from seq 0), when its agent is assigned
one (from the `assigned` entry's seq), and when a replay (`resume`, catch-up) ends. Entries
are offered in any order from any source (the local append, another node, a catch-up); each
reaches the session at most once and in seq order (docs/delivery.md, steps 1-4).

Cython because `offer` runs for every delivered entry: a WebSocket session's fields are
read as C struct fields (listener.pxd); any other `Session` through its attributes, by the
same code.
"""

from gateway.listener cimport Connection


def subscribe(s, conv: str, seq: int):
    """Subscribe `s` to `conv`, having been sent everything up to `seq`; never moves a cursor back."""
    sent = s.sent
    if sent is None:
        s.sent = {conv: seq}
    elif seq > sent.get(conv, -1):
        sent[conv] = seq


def unsubscribe(s, conv: str):
    """Stop live delivery of `conv` to `s` (its agent was unassigned)."""
    if s.sent is not None:
        s.sent.pop(conv, None)


def subscribed_to(s, conv: str):
    """Does `s` receive `conv` live?"""
    return s.sent is not None and conv in s.sent


def cursor(s, conv: str):
    """The last seq of `conv` sent to `s` (0 when not subscribed)."""
    sent = s.sent
    return sent.get(conv, 0) if sent is not None else 0


def subscribed(s):
    """The conversations `s` receives live, as a list (safe to hold across awaits)."""
    return list(s.sent) if s.sent is not None else []


cpdef bint offer(object s, str conv, long long seq, object out) except -1:
    """Queue log entry `seq` of `conv` on `s`: at most once and in order.

    Returns True if it was queued, held for a running replay, already sent, or `s` is not
    subscribed (it resumes when it wants the conversation); False if the entry is ahead of
    what `s` has seen: the caller catches `s` up from the log.
    """
    cdef Connection c = None
    cdef dict syncing
    cdef dict sent
    if type(s) is Connection:
        c = <Connection>s
        if c.closed:
            return True
        syncing = c.syncing
        sent = c.sent
    else:
        if s.closed:
            return True
        syncing = s.syncing
        sent = s.sent
    if syncing is not None:
        held = syncing.get(conv)
        if held is not None:
            held.append((seq, out))
            return True
    if sent is None:
        return True
    last = sent.get(conv)
    if last is None or seq <= <long long>last:
        return True
    if seq != <long long>last + 1:
        return False
    sent[conv] = seq
    if c is not None:
        c.push(out)
    else:
        s.push(out)
    return True


def begin_replay(s, conv: str):
    """Hold live entries of `conv` back while a replay runs; None if one already runs on `s`."""
    syncing = s.syncing
    if syncing is None:
        syncing = s.syncing = {}
    elif conv in syncing:
        return None
    held = []
    syncing[conv] = held
    return held


def end_replay(s, conv: str):
    """The replay of `conv` on `s` ended (sent everything or gave up)."""
    syncing = s.syncing
    if syncing is not None:
        syncing.pop(conv, None)
        if not syncing:
            s.syncing = None
