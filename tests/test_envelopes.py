"""Envelope decoding (gateway/envelopes.py): JSON and msgpack agree, and bad input is always a ProtocolError.

Property tests (hypothesis) over envelopes built from the declared kinds with fields
mutated at random: the same dict sent as JSON and as msgpack, and handed over as a dict by
another channel (`from_dict`), gets the same verdict: the same Struct, or an error with the
same code and field.
"""

from __future__ import annotations

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.envelopes import KINDS, decode, from_dict
from gateway.protocol import ProtocolError

MAX_TEXT = 50

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=140),
                    st.floats(allow_nan=False, allow_infinity=False))  # JSON has no infinity (orjson writes null)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=70), inner, max_size=35)),
                      max_leaves=40)
FIELDS = ["t", "rid", "conv", "id", "text", "att", "group", "meta", "after", "on", "seq", "before", "limit",
          "status", "capacity", "to", "token"]


def verdict(fn):
    try:
        env = fn()
    except ProtocolError as e:
        return ("error", e.code, e.field, e.rid)
    return ("ok", env)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS) + ["nope"]),
       fields=st.dictionaries(st.sampled_from(FIELDS), values, max_size=6))
def test_json_msgpack_and_dict_agree(kind, fields):
    env = {"t": kind, **fields} if "t" not in fields else fields
    as_json = verdict(lambda: decode(orjson.dumps(env), False, MAX_TEXT))
    as_msgpack = verdict(lambda: decode(msgpack.packb(env, use_bin_type=True), True, MAX_TEXT))
    as_dict = verdict(lambda: from_dict(env, MAX_TEXT))
    assert as_json == as_msgpack == as_dict


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_an_envelope_or_a_protocol_error(payload):
    for binary in (False, True):
        try:
            decode(payload, binary, MAX_TEXT)
        except ProtocolError as e:
            assert e.code in {"bad_envelope", "unknown_kind", "missing_field", "bad_field"}


@pytest.mark.parametrize("text, ok", [("é" * MAX_TEXT, True), ("é" * (MAX_TEXT + 1), False), ("😀" * MAX_TEXT, True)])
def test_text_limit_counts_code_points(text, ok):
    env = {"t": "msg", "conv": "c", "id": "i", "text": text}
    assert verdict(lambda: decode(orjson.dumps(env), False, MAX_TEXT))[0] == ("ok" if ok else "error")


def test_each_kind_names_its_tag():
    for kind, cls in KINDS.items():
        assert cls.t == kind
    env = decode(b'{"conv": "c1", "t": "close", "rid": 9}', False, MAX_TEXT)  # the tag need not come first
    assert (env.t, env.conv, env.rid) == ("close", "c1", 9)
