"""Key layout (every id is percent-encoded, so ':' '{' '}' in ids can't collide):

    P:{c:T:C}:doc|log|ids|meta   one conversation: JSON doc, log stream, (sender, client id) -> seq, seq/fence
                                 (one hash tag: a conversation stays in one slot, scripts stay atomic)
    P:{v:T:V}:open|sticky|convs  a visitor's open conversation, last agent, and every conversation of theirs
    P:{a:T}:agents|load|avail:G|convs:A   a tenant's agents, loads, eligible set per group, holdings
    P:{a:T}:events[:wh|:lease]   agent.status webhook events (a stream), the senders' cursors and lease
    P:{q:T}:q:G|since:G|groups   waiting queues, when each entry joined (conv -> ms), the groups with a queue
    P:{s:T}:bot|queued|assigned  the tenant's open conversations by state (sets of ids; the supervisor's counts)
    P:{l:T:S}:lock|fence         segment lock S of tenant T, with its fencing counter
    P:{p:T:U}:nodes              which nodes hold user U (presence)
    P:{n:N}:users                who node N holds (for cleaning up after it dies)
    P:nodes                      live nodes: member N, score = heartbeat expiry (ms)
    P:ch:N                       node N's delivery channel (sharded pub/sub)
    P:{k:T}:contacts:C           channel C's users of tenant T: external id -> {visitor, conv, seq} (gateway/channels)
    P:apikeys                    REST API keys: key id -> JSON (hashed secret; gateway/api_keys.py)
    P:archive                    conversations whose archive copy is behind: member T:C, score = due (ms)
    P:{c:T:C}:archiving          the lease of the node archiving it (archiver.py)

P is the prefix (`cg` unless tests give their own).
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import quote


@lru_cache(maxsize=1 << 16)
def q(s: str) -> str:
    """An id as it appears in a key (cached: the same tenants, conversations and users recur on
    every message, and `quote` showed in the cluster profile)."""
    return quote(s, safe="")


class Keys:
    """Key builders for the prefix `self._p`."""

    _p: str

    def _ck(self, tenant: str, conv: str, part: str) -> str:
        return f"{self._p}:{{c:{q(tenant)}:{q(conv)}}}:{part}"

    def _vk(self, tenant: str, visitor: str, part: str) -> str:
        return f"{self._p}:{{v:{q(tenant)}:{q(visitor)}}}:{part}"

    def _ak(self, tenant: str, part: str) -> str:
        return f"{self._p}:{{a:{q(tenant)}}}:{part}"

    def _qk(self, tenant: str, part: str) -> str:
        return f"{self._p}:{{q:{q(tenant)}}}:{part}"

    def _sk(self, tenant: str, state: str) -> str:
        return f"{self._p}:{{s:{q(tenant)}}}:{state}"

    def _pk(self, tenant: str, user: str) -> str:
        return f"{self._p}:{{p:{q(tenant)}:{q(user)}}}:nodes"

    def _nk(self, node: str) -> str:
        return f"{self._p}:{{n:{q(node)}}}:users"

    def _archive_key(self) -> str:
        return f"{self._p}:archive"

    def _channel(self, node: str) -> str:
        return f"{self._p}:ch:{q(node)}"
