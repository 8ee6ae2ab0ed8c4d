# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-connection object and its per-frame path (a picows WSListener).

One `Connection` per WebSocket holds everything the node keeps for it, so an
idle connection costs this object, picows' transport and the kernel socket:
no task, no timer, no buffers beyond picows' read buffer. Frames are checked
here (RFC 6455 rules picows leaves to the application: reserved bits, fragment
order, UTF-8, close codes), decoded and rate limited, then handed to the chat core.
Outgoing envelopes collect in `outbox` and leave as one frame per loop
iteration (a batch when there are several).

This is the WebSocket implementation of `gateway.session.Session`: transport only.
The fields the chat core keeps per connection live here for memory's sake (one object
per connection), but each is written by its owner (the table in session.py).
"""

from picows.picows cimport WSListener, WSTransport, WSFrame, WSMsgType, WSCloseCode, MemoryBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport fmin
from libc.string cimport memcpy

import logging
import time
from asyncio import _get_running_loop

from gateway.envelopes import decode as _decode
from gateway.protocol import Outgoing, ProtocolError, msgpack_array_header
from gateway.logs import client_fault as _client_fault
from gateway.logs import peer_of as _peer_of
from gateway.replies import Closing, Error

cdef object _monotonic = time.monotonic
cdef object _log = logging.getLogger("gateway.listener")

# Close codes a peer may send (RFC 6455 7.4.1 and the IANA registry); others are a protocol error.
cdef frozenset _VALID_CLOSE = frozenset([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014])
# Closes for the client's fault (RFC 6455 7.4.1: protocol error, bad UTF-8, too big): logged as such.
cdef frozenset _CLIENT_FAULT_CODES = frozenset([1002, 1007, 1009])


# picows writes a frame header (at most 14 bytes) in front of a payload given this much room.
cdef enum:
    HEADROOM = 14
    # What picows' own sends (pings, pongs, close frames) need; it grows the buffer itself if not.
    CONTROL_BUFFER = 128


cdef _send(WSTransport transport, WSMsgType msg_type, bytes payload):
    """Send one frame without picows' per-connection write buffer.

    picows copies every payload of up to 8 KiB into a buffer it keeps per connection
    (1 KiB to start, never shrunk): memory every idle connection pays. Here the copy goes
    into a fresh bytes object with room for the header, which picows writes in place
    (`send_reuse_external_buffer`) before it tries the socket directly, as its own send does.
    """
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, HEADROOM + n)
    cdef char* base = PyBytes_AS_STRING(frame)
    memcpy(base + HEADROOM, PyBytes_AS_STRING(payload), n)
    transport.send_reuse_external_buffer(msg_type, base + HEADROOM, n)


# Write coalescing: a session with something queued writes once per loop turn, whatever
# number of envelopes it was given in that turn (one frame, a batch when several). While the
# last frame of a read burst is handled (picows' `last_in_buffer`), nothing is scheduled: the
# frame's handler flushes when it returns, saving a loop callback per burst (docs/hub.md).
cdef list _dirty = []
cdef object _flush_loop = None  # the loop a flush is scheduled on; None when none is pending
cdef bint _burst_end = False  # handling the last frame of a read burst: on_ws_frame flushes after it


cdef object _loop = None  # the running loop, kept: asking costs a getpid() system call on 3.11


cdef _mark_dirty(object session):
    global _flush_loop, _loop
    _dirty.append(session)
    if _burst_end:
        return
    loop = _loop
    if loop is None or not loop.is_running():  # first use, or a later loop (tests run several)
        loop = _loop = _get_running_loop()
    if loop is not _flush_loop:  # none pending on this loop (a test's earlier loop may have died pending)
        _flush_loop = loop
        loop.call_soon(_flush_dirty)


def _flush_dirty():
    global _flush_loop
    _flush_loop = None
    _flush_now()


cdef _flush_now():
    global _dirty
    dirty = _dirty
    _dirty = []
    for session in dirty:
        try:
            session.flush()
        except Exception:  # one session's failure must not strand the others' queued envelopes
            _log.exception("flushing a session failed")


def schedule_flush(session):
    """Have `session.flush()` called once at the end of this loop turn (any Session: see session.py)."""
    _mark_dirty(session)


cdef bint _utf8(bytes payload):
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


cdef class Limits:
    """Per-node limits shared by every connection (one object, not one per connection)."""

    def __init__(self, max_frame, max_text, rate, burst, strikes, max_write_buffer):
        self.max_frame = max_frame
        self.max_text = max_text
        self.rate = rate
        self.burst = burst
        self.strikes = strikes
        self.max_write_buffer = max_write_buffer


cdef class Connection(WSListener):
    """One WebSocket session; its fields are declared in listener.pxd."""

    def __init__(self, core, Limits limits, ident, bint echo=False):
        self.core = core
        self.limits = limits
        self.ident = ident
        if ident is not None:
            self.tenant = ident.tenant
            self.user = ident.user
            self.role = ident.role
            self.expires = ident.expires
        self.echo = echo
        self._tokens = limits.burst
        self._refilled = _monotonic()
        self.last_rx = self.last_msg = self._refilled

    # picows callbacks

    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        # picows keeps the parsed upgrade request and our response (header multidicts, ~1-2 KB)
        # for the connection's lifetime; the identity is all we need from them.
        transport.request = None
        transport.response = None
        # Data frames go through _send; this buffer is left to picows' control frames.
        transport._write_buffer = MemoryBuffer(CONTROL_BUFFER)
        self.core.connected(self)

    cpdef on_ws_disconnected(self, WSTransport transport):
        self.closed = True
        self.outbox = None
        self.core.disconnected(self)

    cpdef pause_writing(self):
        self.paused = True

    cpdef resume_writing(self):
        # Rare (a replay or a burst filled the transport's buffer): the hub wakes a waiting replay.
        self.paused = False
        self.core.resumed_writing(self)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        global _burst_end
        if not frame.last_in_buffer or _burst_end:
            self._frame(frame)
            return
        _burst_end = True
        try:
            self._frame(frame)
        finally:
            _burst_end = False
            if _dirty:
                _flush_now()

    cdef _frame(self, WSFrame frame):
        cdef WSMsgType msg_type = frame.msg_type
        self.last_rx = _monotonic()
        if self.closed:
            # We sent a close and are draining the peer's input until its close arrives, so the
            # kernel never resets the connection with our close frame still unread.
            if msg_type == WSMsgType.CLOSE:
                self.transport.disconnect()
            return
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self.fail(WSCloseCode.PROTOCOL_ERROR, "reserved bits set without a negotiated extension")
            return
        if msg_type == WSMsgType.PONG:
            self.awaiting_pong = False
            return
        if msg_type == WSMsgType.PING:
            # Answered here rather than by picows' auto-pong, which would answer after our close too.
            self.transport.send_pong(frame.get_payload_as_bytes())
            return
        if msg_type == WSMsgType.CLOSE:
            self._on_close(frame)
            return
        if msg_type == WSMsgType.CONTINUATION:
            if self._frag is None:
                self.fail(WSCloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue")
                return
            if len(self._frag) + frame.payload_size > self.limits.max_frame:
                self._frag = None
                self.fail(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
                return
            self._frag += frame.get_payload_as_memoryview()
            if frame.fin:
                payload = bytes(self._frag)
                self._frag = None
                self._message(self._frag_type, payload)
            return
        if self._frag is not None:
            self.fail(WSCloseCode.PROTOCOL_ERROR, "new message before the fragmented one finished")
            return
        if not frame.fin:
            self._frag = bytearray(frame.get_payload_as_memoryview())
            self._frag_type = msg_type
            return
        self._message(msg_type, frame.get_payload_as_bytes())

    cdef _on_close(self, WSFrame frame):
        cdef Py_ssize_t n = frame.payload_size
        cdef int code
        # One close each way (RFC 6455 5.5.1): anything the peer sends after its close, a second
        # close included (Autobahn 7.1.2), is ignored by the `closed` branch of on_ws_frame.
        if self.outbox is not None:
            self.flush()  # replies to frames before the close (an ack among them) go out before ours
            if self.closed:
                return
        self.closed = True
        self.outbox = None
        if n == 0:
            self.transport.send_close(WSCloseCode.OK)
        elif n == 1:
            self.transport.send_close(WSCloseCode.PROTOCOL_ERROR)
        else:
            code = <int>frame.get_close_code()
            reason = frame.get_close_message()
            try:
                if reason:
                    reason.decode("utf-8")
            except UnicodeDecodeError:
                self.transport.send_close(WSCloseCode.INVALID_TEXT)
            else:
                if code in _VALID_CLOSE or 3000 <= code <= 4999:
                    self.transport.send_close(<WSCloseCode>code)
                else:
                    self.transport.send_close(WSCloseCode.PROTOCOL_ERROR)
        # Half-close rather than close: a socket closed with the peer's late frames unread makes
        # the kernel send a reset, and a reset can destroy our close frame before the peer reads
        # it. The peer's FIN ends the connection; core.closing cuts off one that never sends it.
        ut = self.transport.underlying_transport
        if ut.can_write_eof():
            ut.write_eof()
        else:
            self.transport.disconnect()
        self.core.closing(self)

    cdef _message(self, WSMsgType msg_type, bytes payload):
        self.last_msg = self.last_rx
        if len(payload) > self.limits.max_frame:
            self.fail(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
            return
        if self.echo:
            if msg_type == WSMsgType.TEXT and not _utf8(payload):
                self.fail(WSCloseCode.INVALID_TEXT, "text frame is not valid UTF-8")
                return
            _send(self.transport, msg_type, payload)
            return
        if msg_type == WSMsgType.TEXT and not payload.isascii() and not _utf8(payload):
            self.fail(WSCloseCode.INVALID_TEXT, "text frame is not valid UTF-8")
            return
        if not self._format_known:
            self._format_known = True
            self.binary = msg_type == WSMsgType.BINARY
        try:
            env = _decode(payload, msg_type == WSMsgType.BINARY, self.limits.max_text)
        except ProtocolError as e:
            if self._take_token(e.rid):
                self.send_env(e.envelope())
            return
        if not self._take_token(env.rid):
            return
        self.core.submit(self, env)

    cdef bint _take_token(self, rid):
        cdef double now = self.last_rx
        self._tokens = fmin(self.limits.burst, self._tokens + (now - self._refilled) * self.limits.rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._strikes = 0
            return True
        self._strikes += 1
        if self._strikes > self.limits.strikes:
            self.fail(WSCloseCode.POLICY_VIOLATION, "flood: too many envelopes", "flood")
        else:
            # The rid tells the client which request was dropped.
            self.send_env(Error(code="rate_limited", message="too many envelopes; this one was dropped, retry later",
                                rid=rid))
        return False

    # sending

    cpdef fail(self, int code, str reason, str why=None, object retry_ms=None):
        """Close this connection on purpose, telling the peer why (RFC 6455 close frame).

        With `why` (a word: flood, slow_reader, token_expired, heartbeat, shutdown, overload) a chat
        connection first gets a `closing` envelope {code, reason: why, message, retry_ms}
        (docs/protocol.md). A close for the client's fault (a protocol error, a flood) is logged as one.
        """
        if self.closed:
            return
        if self.transport.is_close_frame_sent:
            # picows closed it already (its frame parser refused the client's bytes, and logged that
            # as a client fault): a frame it passed on before that needs no second close or line.
            self.closed = True
            self.outbox = None
            return
        if code in _CLIENT_FAULT_CODES or why == "flood":
            self._log_fault(code, reason, why)
        if self.outbox is not None:
            self.flush()  # errors queued this iteration (e.g. rate_limited) explain the close
            if self.closed:
                return  # that flush found a slow reader and closed already
        self.closed = True
        self.outbox = None
        if why is not None and not self.echo:
            self._write([Outgoing(Closing(code, why, reason, retry_ms))])
        self.transport.send_close(<WSCloseCode>code, reason.encode())
        self.core.closing(self)

    def _log_fault(self, int code, str reason, str why):
        _client_fault(why or "protocol", code, reason, self.tenant, self.user, self.cid, _peer_of(self.transport))

    cpdef send_env(self, object env):
        self.push(Outgoing(env))

    cpdef push(self, out):
        if self.closed:
            return
        if self.outbox is None:
            self.outbox = [out]
            _mark_dirty(self)
        else:
            self.outbox.append(out)

    cpdef flush(self):
        cdef list out = self.outbox
        self.outbox = None
        if self.closed or out is None:
            return
        self._write(out)
        if self.transport.underlying_transport.get_write_buffer_size() > self.limits.max_write_buffer:
            self.slow_reader()

    cpdef slow_reader(self):
        """The client stopped reading: close it with 1008.

        Nothing is lost: every entry is in the log and the client resumes from its last seq when
        it comes back. The close is queued behind what is buffered, so a client that reads again
        finds a `closing` envelope and 1008 there, not a reset.
        """
        self.core.slow_reader(self)
        self.fail(WSCloseCode.POLICY_VIOLATION, "slow reader: too much unread data", "slow_reader")

    cdef _write(self, list out):
        """One frame for `out` (a batch if several), in the connection's format."""
        cdef Py_ssize_t n = len(out)
        if self.binary:
            if n == 1:
                _send(self.transport, WSMsgType.BINARY, out[0].msgpack())
            else:
                _send(self.transport, WSMsgType.BINARY, msgpack_array_header(n) + b"".join([o.msgpack() for o in out]))
        else:
            if n == 1:
                _send(self.transport, WSMsgType.TEXT, out[0].json())
            else:
                _send(self.transport, WSMsgType.TEXT, b"[" + b",".join([o.json() for o in out]) + b"]")

    def ping(self):
        self.awaiting_pong = True
        self.transport.send_ping()

    def close_going_away(self, str reason):
        self.fail(WSCloseCode.GOING_AWAY, reason, "shutdown")

    cpdef bint hang_up(self):
        """The close deadline passed: flush the backlog and our close frame, then close (True);
        if that was already under way, cut the connection off (False)."""
        if self.transport.underlying_transport.is_closing():
            self.transport.disconnect(False)
            return False
        self.transport.disconnect()
        return True
