# cython: language_level=3
"""The WebSocket session's fields, shared with the Cython modules that read them directly
(gateway/subscriptions.pyx): a C struct field instead of a Python attribute lookup on the
per-message path. Who writes which field: the table in gateway/session.py."""

from picows.picows cimport WSListener, WSTransport, WSFrame, WSMsgType


cdef class Limits:
    cdef public Py_ssize_t max_frame
    cdef public Py_ssize_t max_text
    cdef public double rate
    cdef public double burst
    cdef public int strikes
    cdef public Py_ssize_t max_write_buffer


cdef class Connection(WSListener):
    cdef public object core            # the chat core (gateway.session.Core: the hub)
    cdef public WSTransport transport
    cdef public Limits limits
    cdef public object ident
    cdef public str tenant
    cdef public str user
    cdef public str role
    cdef public long long cid
    cdef public bint echo
    cdef public bint binary          # answer in msgpack (the client's first envelope was binary)
    cdef bint _format_known
    cdef double _tokens
    cdef double _refilled
    cdef int _strikes
    cdef object _frag                # bytearray while a fragmented message is being reassembled
    cdef WSMsgType _frag_type
    cdef public double last_rx
    cdef public double last_msg          # when its last data frame arrived (pongs don't count): idleness
    cdef public bint awaiting_pong
    cdef public bint closed
    cdef public dict sent            # subscription cursors: gateway/subscriptions.py owns them
    cdef public dict syncing
    cdef public list outbox          # Outgoing envelopes waiting for this iteration's flush
    cdef public object inbox         # envelopes waiting for the hub's worker; None when idle
    cdef public object worker
    cdef public bint paused          # the transport's write buffer is above its high-water mark
    cdef public double expires       # the token's `exp` (Unix seconds); 0 for none (echo)
    cdef public str channel          # None: the web widget; a messaging channel's name stamps its entries (`ch`)

    cdef _frame(self, WSFrame frame)
    cdef _on_close(self, WSFrame frame)
    cdef _message(self, WSMsgType msg_type, bytes payload)
    cdef bint _take_token(self, rid)
    cpdef fail(self, int code, str reason, str why=*, object retry_ms=*)
    cpdef send_env(self, object env)
    cpdef push(self, out)
    cpdef flush(self)
    cpdef slow_reader(self)
    cdef _write(self, list out)
    cpdef bint hang_up(self)
