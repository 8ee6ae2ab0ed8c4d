"""Node configuration: defaults, a TOML file, then GATEWAY_* environment variables.

Defaults run a development node out of the box. A production node must be given
a real secret: it refuses to start otherwise (see `Config.check`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .auth import KeyRing

# A secret that looks configured but is a well-known placeholder is as bad as none.
_PLACEHOLDER_SECRETS = {"", "secret", "changeme", "change-me", "dev", "development", "test"}
MIN_SECRET_LEN = 32


class ConfigError(ValueError):
    """The configuration can't be used; the message says which setting and why."""


@dataclass
class Config:
    env: str = "development"  # development | production
    host: str = "127.0.0.1"
    http_port: int = 8080
    ws_port: int = 8765
    public_ws_url: str = ""  # what pages are told to dial; derived from host/ws_port when empty
    node_id: str = ""
    jwt_secret: str = ""
    jwt_issuer: str = ""
    admin_token: str = ""  # bearer token for /admin; generated in development
    default_tenant: str = "demo"

    # Heartbeats: ping a connection silent for heartbeat_s, drop it heartbeat_timeout_s later.
    heartbeat_s: float = 20.0
    heartbeat_timeout_s: float = 10.0

    # Limits per connection.
    max_frame: int = 64 * 1024
    max_text: int = 4000
    read_buffer: int = 1024  # picows grows it when a bigger frame arrives
    rate_per_s: float = 20.0
    rate_burst: float = 40.0
    flood_strikes: int = 10  # rate_limited errors in a row before close 1008
    max_write_buffer: int = 256 * 1024  # bytes queued to a client that stopped reading

    # Conversations and routing.
    history_keep: int = 10_000  # log entries kept per conversation
    assign_history: int = 50  # entries sent to an agent with `assigned`
    agent_capacity: int = 3
    agent_grace_s: float = 30.0
    lock_segments: int = 1024

    # Idempotency cache in front of the coordinator's exact record.
    dedup_capacity: int = 200_000
    dedup_window_s: float = 600.0

    coordinator: str = "embedded"  # embedded | redis
    # Embedded: where the node keeps its state (SQLite, docs/store.md); "none" keeps it in memory only
    # (tests, benchmarks). Relative paths are from the directory the node was started in.
    data_dir: str = "./data"
    store_fsync: bool = False  # embedded: ack only once the disk has the entry (synchronous=FULL), not just the OS
    store_max_mb: int = 0  # embedded: the most the database may grow to (0: no limit); past it, `unavailable`
    # Embedded: closed conversations are deleted (state and log) once this many days have passed since
    # they were opened; 0 keeps them. `tenant_retention_days` (a [tenant_retention_days] table in the
    # file) sets it per tenant.
    retention_days: float = 0.0
    closed_keep_s: float = 600.0  # embedded with a store: a closed conversation leaves memory this long after it closed
    memory_budget_mb: int = 256  # embedded with a store: the most MiB of log entries kept in memory (0: no limit)
    tenant_retention_days: dict[str, float] = field(default_factory=dict)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # the URL names one node of a Redis Cluster
    # Cluster: when an ack is sent. "memory": once Redis has the entry (on disk as Redis's AOF
    # setting says); "aof": only once WAITAOF 1 0 says the master's AOF has it on disk (needs
    # appendonly yes and Redis 7.2+ or Valkey; docs/cluster.md, step 2d).
    redis_ack: str = "memory"
    node_heartbeat_s: float = 1.0  # cluster: how often a node renews its registration
    node_ttl_s: float = 5.0  # cluster: a node silent this long is dead; others clean up after it
    # Cluster: a PostgreSQL database (postgresql:// URL) that keeps conversations past Redis's hot
    # window (history_keep entries) and after they close (docs/archive.md); "" keeps all in Redis.
    archive_url: str = ""
    archive_after_s: float = 600.0  # cluster with an archive: a closed conversation leaves Redis this long after closing
    archive_poll_s: float = 1.0  # cluster with an archive: how often each node's archiver looks for work

    # Bots answer first where configured ([bots] table of the config file, docs/bots.md);
    # an empty table means the built-in FAQ bot for every tenant and group.
    bots_enabled: bool = True
    bots: dict[str, Any] = field(default_factory=dict)

    # Outbound webhooks ([[webhooks]] tables of the file: name, tenant, url, secret, events, max_age_s,
    # backoff_s; docs/webhooks.md); embedded coordinator with a store only, for now.
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    webhook_sweep_s: float = 30.0  # cluster: how often one node looks for conversations a dead node did not queue
    # Messaging channels ([[channels]] tables of the file: kind = telegram | http, name, tenant, secret,
    # token and api_base (telegram), url (http); docs/channels.md); embedded coordinator only, for now.
    channels: list[dict[str, Any]] = field(default_factory=list)
    channel_owner_s: float = 10.0  # cluster: a contact's relay moves to another node this long after its node died
    api_rate_per_s: float = 50.0  # REST API: requests per second per key (a token bucket per node)
    api_rate_burst: float = 100.0

    echo_endpoint: bool = False  # /echo: same listener path, for RFC 6455 conformance suites
    demo: bool = True  # serve the demo pages and /api/dev/token (never in production)
    log_level: str = "info"
    log_format: str = "text"  # text | json (one object per line, with tenant, conv, cid... where known)
    log_connections: bool = False  # one line per connection opened and closed (picows' own; off: DEBUG)

    # Operations (docs/operations.md). Memory guard lines, MiB of RSS (0: off): at the soft one new
    # upgrades are refused and caches shed, at the hard one the idlest connections are closed (1013).
    memory_soft_mb: int = 0
    memory_hard_mb: int = 0
    # Drain (SIGTERM, POST /admin/drain): clients are told to reconnect within drain_spread_s;
    # whoever is still connected after drain_timeout_s is closed with 1001.
    drain_spread_s: float = 10.0
    drain_timeout_s: float = 30.0
    # A reload that changes jwt_secret keeps accepting tokens signed with the old one this long.
    jwt_rotation_grace_s: float = 3600.0
    # Secrets tokens may still be signed with (a rotation's window across restarts): remove each
    # once the tokens it signed have expired. Tokens are signed with jwt_secret only.
    jwt_previous_secrets: list[str] = field(default_factory=list)

    generated: list[str] = field(default_factory=list, repr=False)
    # The keys tokens are checked against: jwt_secret, and keys a reload replaced (auth.KeyRing).
    keys: Any = field(default=None, repr=False, compare=False)
    # Where `load` read it (file path or None, and the overrides given): what a reload reads again.
    origin: tuple[str | None, dict[str, Any]] = field(default=(None, {}), repr=False, compare=False)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def ws_url(self) -> str:
        if self.public_ws_url:
            return self.public_ws_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"ws://{host}:{self.ws_port}/ws"

    def check(self) -> None:
        """Fill development defaults, refuse unsafe production settings."""
        if self.env not in ("development", "production"):
            raise ConfigError(f"env must be development or production, not {self.env!r}")
        if self.coordinator not in ("embedded", "redis"):
            raise ConfigError(f"coordinator must be embedded or redis, not {self.coordinator!r}")
        if self.production:
            if self.jwt_secret.strip().lower() in _PLACEHOLDER_SECRETS or len(self.jwt_secret) < MIN_SECRET_LEN:
                raise ConfigError(
                    "production refuses to start without a real jwt_secret "
                    f"(GATEWAY_JWT_SECRET, at least {MIN_SECRET_LEN} characters, not a placeholder)"
                )
            if not self.admin_token or len(self.admin_token) < MIN_SECRET_LEN:
                raise ConfigError(f"production needs GATEWAY_ADMIN_TOKEN of at least {MIN_SECRET_LEN} characters")
            self.demo = False
        else:
            if not self.jwt_secret:
                self.jwt_secret = secrets.token_urlsafe(32)
                self.generated.append("jwt_secret")
            if not self.admin_token:
                self.admin_token = secrets.token_urlsafe(24)
                self.generated.append("admin_token")
        if any(not isinstance(s, str) or len(s) < (MIN_SECRET_LEN if self.production else 1)
               for s in self.jwt_previous_secrets):
            raise ConfigError(f"jwt_previous_secrets must be secrets (in production, of at least {MIN_SECRET_LEN} characters)")
        if self.keys is None:
            self.keys = KeyRing(self.jwt_secret, self.jwt_previous_secrets)
        if not self.node_id:
            self.node_id = f"{socket.gethostname()}-{os.getpid()}"
        if self.memory_budget_mb < 0:
            raise ConfigError("memory_budget_mb must be 0 (no limit) or more")
        for name in ("max_frame", "max_text", "read_buffer", "agent_capacity", "history_keep", "lock_segments"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.retention_days < 0 or any(not isinstance(v, (int, float)) or v < 0
                                          for v in self.tenant_retention_days.values()):
            raise ConfigError("retention days must be numbers, 0 (keep) or more")
        if self.webhooks and self.coordinator == "embedded" and self.data_dir.strip().lower() == "none":
            raise ConfigError("webhooks need a store (data_dir) with the embedded coordinator: their outbox is "
                              "committed with the log there")
        if self.webhooks:
            from .webhooks import WebhookConfigError, subscriptions

            try:
                subscriptions(self.webhooks)
            except WebhookConfigError as e:
                raise ConfigError(str(e)) from None
        self._check_channels()
        if self.redis_ack not in ("memory", "aof"):
            raise ConfigError(f"redis_ack must be memory or aof, not {self.redis_ack!r}")
        if self.redis_ack == "aof" and self.coordinator != "redis":
            raise ConfigError('redis_ack = "aof" is for the redis coordinator (embedded: store_fsync puts acked entries on disk)')
        if self.archive_url and self.coordinator != "redis":
            raise ConfigError("archive_url is for the redis coordinator (embedded keeps everything in its store: data_dir)")
        if self.archive_after_s < 0 or self.archive_poll_s <= 0:
            raise ConfigError("archive_after_s must be 0 or more and archive_poll_s positive")
        if self.heartbeat_s <= 0 or self.heartbeat_timeout_s <= 0:
            raise ConfigError("heartbeat_s and heartbeat_timeout_s must be positive")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, not {self.log_format!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log_level must be debug, info, warning, error or critical, not {self.log_level!r}")
        if self.memory_soft_mb < 0 or self.memory_hard_mb < 0 or (
                self.memory_soft_mb and self.memory_hard_mb and self.memory_hard_mb < self.memory_soft_mb):
            raise ConfigError("memory_soft_mb and memory_hard_mb must be 0 (off) or more, the hard line at or above the soft")
        if self.drain_spread_s < 0 or self.drain_timeout_s < 0 or self.jwt_rotation_grace_s < 0:
            raise ConfigError("drain_spread_s, drain_timeout_s and jwt_rotation_grace_s must be 0 or more")
        if self.drain_timeout_s and self.drain_spread_s > self.drain_timeout_s:
            raise ConfigError("drain_spread_s must not be longer than drain_timeout_s (clients told to come back "
                              "later than the node waits would be cut off)")

    def _check_channels(self) -> None:
        names: set[str] = set()
        for i, c in enumerate(self.channels):
            where = f"channels[{i}]"
            need = {"telegram": ("name", "tenant", "secret", "token"), "http": ("name", "tenant", "secret", "url")}
            kind = c.get("kind") if isinstance(c, dict) else None
            if kind not in need and not (isinstance(kind, str) and re.fullmatch(r"[\w.]+:\w+", kind)):
                raise ConfigError(f"{where}: kind must be telegram, http or a module:Class of your own")
            missing = [k for k in need.get(kind, ("name", "tenant", "secret")) if not isinstance(c.get(k), str) or not c.get(k)]
            if missing:
                raise ConfigError(f"{where}: needs {', '.join(missing)}")
            if len(c["secret"]) < 16:
                raise ConfigError(f"{where}: secret must be at least 16 characters")
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", c["name"]) or c["name"] in names:
                raise ConfigError(f"{where}: name must be unique, letters, digits, - and _")
            names.add(c["name"])
        if self.channel_owner_s <= 0:
            raise ConfigError("channel_owner_s must be positive")

    def describe(self) -> dict[str, Any]:
        """Settings safe to print or serve: secrets masked."""
        out = {}
        for f in fields(self):
            if f.name in NOT_SETTINGS:
                continue
            v = getattr(self, f.name)
            if f.name in ("jwt_secret", "admin_token") and v:
                v = "<generated>" if f.name in self.generated else "<set>"
            elif f.name == "jwt_previous_secrets":
                v = f"<{len(v)} set>"
            elif f.name in ("redis_url", "archive_url"):
                v = re.sub(r"//[^@/]*@", "//***@", v)  # never print a password
            elif f.name in ("bots", "webhooks", "channels"):
                v = _mask(v)
            out[f.name] = v
        return out


NOT_SETTINGS = ("generated", "keys", "origin")  # Config fields the node fills in, never read from a file or reloaded
_SECRET_KEY = re.compile(r"(key|secret|token|password)", re.I)


def _mask(value: Any) -> Any:
    """A copy of a config table with secret-looking values (api_key, secret, token...) masked."""
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) and v else _mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def _coerce(kind: type | str, raw: str) -> Any:
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind) if isinstance(kind, str) else kind
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"not a boolean: {raw!r}")
    return kind(raw)


def _typed(kind: Any, value: Any, where: str) -> Any:
    """A file's value checked against its setting's type (`kind`: the annotation, a string here);
    an integer is a float's value too. Raises ConfigError naming the setting."""
    kind = str(kind)
    base = kind.split("[", 1)[0]
    ok = {"bool": lambda v: isinstance(v, bool),
          "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str),
          "dict": lambda v: isinstance(v, dict),
          "list": lambda v: isinstance(v, list)}.get(base)
    if ok is not None and not ok(value):
        raise ConfigError(f"{where} must be {'a number' if base == 'float' else 'an integer' if base == 'int' else base}, "
                          f"not {value!r}")
    return float(value) if base == "float" else value


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None, **overrides: Any) -> Config:
    """Build a Config: defaults < file (TOML, [gateway] table or top level) < GATEWAY_* env < overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path or env.get("GATEWAY_CONFIG")
    known = {f.name: f for f in fields(Config) if f.name not in NOT_SETTINGS}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        if isinstance(data.get("gateway"), dict):  # settings in a [gateway] table, beside the other tables
            table = data.pop("gateway")
            both = sorted(set(table) & set(data))
            if both:
                raise ConfigError(f"{path}: {', '.join(both)} set both in [gateway] and outside it")
            data.update(table)
        for k, v in data.items():
            if k not in known:
                raise ConfigError(f"{path}: unknown setting {k!r}")
            values[k] = _typed(known[k].type, v, f"{path}: {k}")
    for name, f in known.items():
        raw = env.get(f"GATEWAY_{name.upper()}")
        if raw is not None and name not in ("bots", "tenant_retention_days", "webhooks", "channels"):  # file-only tables
            try:
                values[name] = _coerce(f.type, raw)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"GATEWAY_{name.upper()}: {e}") from None
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in known:
            raise ConfigError(f"unknown setting {k!r}")
        values[k] = v
    cfg = Config(**values)
    cfg.check()
    cfg.origin = (str(path) if path else None, {k: v for k, v in overrides.items() if v is not None})
    return cfg


def replace(cfg: Config, **changes: Any) -> Config:
    return dataclasses.replace(cfg, **changes)
