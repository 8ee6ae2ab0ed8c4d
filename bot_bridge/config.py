"""Bridge configuration: the ``[bots]`` table of the gateway's TOML file (schema in docs/bots.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import BotContext, BotResult, is_cjk

DEFAULT_HOLDING = {
    "en": "Thanks for your message! One moment please, we'll get back to you shortly.",
    "zh": "感谢您的留言！请稍候，我们马上为您处理。",
}
DEFAULT_HANDOFF = {
    "en": "I'm connecting you with a member of our team now.",
    "zh": "正在为您转接人工客服，请稍候。",
}

# Keys of a [bots.backends.NAME] table that the bridge reads; every other key goes to the backend.
BRIDGE_KEYS = frozenset(
    {"type", "secondary", "max_concurrency", "queue_wait_s", "max_queue", "first_chunk_timeout_s", "total_timeout_s", "cache"}
)


class ConfigError(ValueError):
    """The [bots] table is malformed; the message names the offending key."""


Localised = str | dict[str, str]


@dataclass
class BackendSpec:
    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)
    secondary: str = ""
    max_concurrency: int | None = None
    queue_wait_s: float | None = None
    max_queue: int | None = None
    first_chunk_timeout_s: float | None = None
    total_timeout_s: float | None = None
    cache: bool = True


@dataclass(frozen=True)
class Template:
    """A business scenario's prompt ([bots.templates.NAME]): what an LLM backend is told and how it
    samples. None fields keep the backend's own settings. `system_prompt` may hold `{faq}`, where
    the FAQ entries retrieved for the question go (backends with `faq_context`)."""

    name: str
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass
class TenantRule:
    backend: str | None = None  # None: the global default; "": no bot
    groups: dict[str, str] = field(default_factory=dict)  # group -> backend name ("" = no bot)
    template: str | None = None  # a [bots.templates] name for the tenant's groups without their own
    group_templates: dict[str, str] = field(default_factory=dict)  # group -> template name
    confidence_threshold: float | None = None
    holding_message: Localised | None = None
    handoff_message: Localised | None = None


@dataclass
class BridgeConfig:
    enabled: bool = True
    default: str = "faq"
    backends: dict[str, BackendSpec] = field(default_factory=lambda: {"faq": BackendSpec("faq", "faq")})
    tenants: dict[str, TenantRule] = field(default_factory=dict)
    templates: dict[str, Template] = field(default_factory=dict)
    template: str | None = None  # the template for tenants without their own
    confidence_threshold: float = 0.3  # the FAQ's confidence is a probability (faq.Fusion): set on bench/faq_eval.yaml's tune split
    first_chunk_timeout_s: float = 8.0
    total_timeout_s: float = 60.0
    cancel_timeout_s: float = 5.0
    coalesce_ms: float = 50.0
    coalesce_chars: int = 64
    holding_message: Localised = field(default_factory=lambda: dict(DEFAULT_HOLDING))
    handoff_message: Localised = field(default_factory=lambda: dict(DEFAULT_HANDOFF))
    fallback_faq: str | None = None  # None: the first backend of type "faq"; "": none
    fallback_faq_threshold: float = 0.5
    handoff_on_fallback: bool = True  # a holding-message fallback also asks for a human
    handoff_phrases: list[str] = field(default_factory=list)
    handoff_phrases_replace: bool = False
    cache_enabled: bool = True
    cache_ttl_s: float = 600.0
    cache_max_entries: int = 10_000
    rate_per_s: float = 0.0  # per-tenant token bucket; 0 = unlimited
    rate_burst: float = 20.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    breaker_half_open_probes: int = 1
    max_concurrency: int = 16
    queue_wait_s: float = 0.5
    max_queue: int = 64

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> BridgeConfig:
        """Build from the ``[bots]`` table (a dict as tomllib gives it); absent keys keep their defaults."""
        data = dict(data or {})
        cfg = cls()
        simple = {
            "enabled": bool,
            "default": str,
            "confidence_threshold": float,
            "first_chunk_timeout_s": float,
            "total_timeout_s": float,
            "cancel_timeout_s": float,
            "coalesce_ms": float,
            "coalesce_chars": int,
            "fallback_faq_threshold": float,
            "handoff_on_fallback": bool,
            "handoff_phrases_replace": bool,
        }
        for key, typ in simple.items():
            if key in data:
                setattr(cfg, key, _typed(data.pop(key), typ, key))
        if "fallback_faq" in data:
            cfg.fallback_faq = _typed(data.pop("fallback_faq"), str, "fallback_faq")
        if "template" in data:
            cfg.template = _typed(data.pop("template"), str, "template")
        templates = data.pop("templates", {})
        if not isinstance(templates, dict):
            raise ConfigError("bots.templates: expected a table of name = {system_prompt, temperature, max_tokens}")
        cfg.templates = {name: _template(name, t) for name, t in templates.items()}
        for key in ("holding_message", "handoff_message"):
            if key in data:
                setattr(cfg, key, _localised(data.pop(key), key))
        if "handoff_phrases" in data:
            phrases = data.pop("handoff_phrases")
            if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
                raise ConfigError("bots.handoff_phrases: expected a list of strings")
            cfg.handoff_phrases = phrases
        sections = {
            "cache": {"enabled": ("cache_enabled", bool), "ttl_s": ("cache_ttl_s", float), "max_entries": ("cache_max_entries", int)},
            "rate": {"per_s": ("rate_per_s", float), "burst": ("rate_burst", float)},
            "breaker": {
                "failures": ("breaker_failures", int),
                "cooldown_s": ("breaker_cooldown_s", float),
                "half_open_probes": ("breaker_half_open_probes", int),
            },
            "concurrency": {"limit": ("max_concurrency", int), "queue_wait_s": ("queue_wait_s", float), "max_queue": ("max_queue", int)},
        }
        for sec, fields in sections.items():
            table = data.pop(sec, None)
            if table is None:
                continue
            if not isinstance(table, dict):
                raise ConfigError(f"bots.{sec}: expected a table")
            for key, value in table.items():
                if key not in fields:
                    raise ConfigError(f"bots.{sec}.{key}: unknown setting (known: {', '.join(fields)})")
                attr, typ = fields[key]
                setattr(cfg, attr, _typed(value, typ, f"bots.{sec}.{key}"))
        backends = data.pop("backends", None)
        if backends is not None:
            if not isinstance(backends, dict):
                raise ConfigError("bots.backends: expected a table of backends")
            cfg.backends = {name: _backend(name, table) for name, table in backends.items()}
        tenants = data.pop("tenants", None)
        if tenants is not None:
            if not isinstance(tenants, dict):
                raise ConfigError("bots.tenants: expected a table of tenants")
            cfg.tenants = {t: _tenant(t, table) for t, table in tenants.items()}
        if data:
            raise ConfigError(f"bots: unknown setting(s): {', '.join(sorted(data))}")
        cfg.validate()
        return cfg

    # ---- lookups the hub needs without a running bridge (the bridge runs in a worker process) ----

    def backend_for(self, tenant: str, group: str) -> str:
        """The backend name configured for (tenant, group); "" when that pair has no bot."""
        if not self.enabled:
            return ""
        rule = self.tenants.get(tenant)
        if rule is not None:
            if group in rule.groups:
                return rule.groups[group]
            if rule.backend is not None:
                return rule.backend
        return self.default

    def handoff_text(self, tenant: str, question: str) -> str:
        rule = self.tenants.get(tenant)
        msg = rule.handoff_message if rule and rule.handoff_message is not None else self.handoff_message
        return pick_language(msg, question)

    def holding_text(self, tenant: str, question: str) -> str:
        rule = self.tenants.get(tenant)
        msg = rule.holding_message if rule and rule.holding_message is not None else self.holding_message
        return pick_language(msg, question)

    def holding_result(self, ctx: BotContext, reason: str) -> BotResult:
        """The last-resort answer: the holding message, asking for a human when so configured."""
        return BotResult(self.holding_text(ctx.tenant, ctx.question), None, handoff=self.handoff_on_fallback,
                         reason=reason, backend="bridge", fallback=True)

    def template_for(self, tenant: str, group: str) -> Template | None:
        """The prompt template of (tenant, group): the group's, else the tenant's, else the default."""
        rule = self.tenants.get(tenant)
        name = None
        if rule is not None:
            name = rule.group_templates.get(group) or rule.template
        name = name or self.template
        return self.templates.get(name) if name else None

    def threshold(self, tenant: str) -> float:
        rule = self.tenants.get(tenant)
        if rule is not None and rule.confidence_threshold is not None:
            return rule.confidence_threshold
        return self.confidence_threshold

    def validate(self) -> None:
        """Every name used must be a configured backend; secondary chains must not loop."""
        names = set(self.backends)

        def check(ref: str, where: str) -> None:
            if ref and ref not in names:
                raise ConfigError(f"{where}: unknown backend {ref!r} (configured: {', '.join(sorted(names)) or 'none'})")

        check(self.default, "bots.default")
        for t, rule in self.tenants.items():
            if rule.backend is not None:
                check(rule.backend, f"bots.tenants.{t}.backend")
            for g, ref in rule.groups.items():
                check(ref, f"bots.tenants.{t}.groups.{g}")
        for spec in self.backends.values():
            check(spec.secondary, f"bots.backends.{spec.name}.secondary")
        if self.fallback_faq:
            check(self.fallback_faq, "bots.fallback_faq")
        templates = set(self.templates)
        refs = [("bots.template", self.template)] + [
            (f"bots.tenants.{t}.template", r.template) for t, r in self.tenants.items()] + [
            (f"bots.tenants.{t}.group_templates.{g}", name) for t, r in self.tenants.items()
            for g, name in r.group_templates.items()]
        for where, name in refs:
            if name and name not in templates:
                raise ConfigError(f"{where}: unknown template {name!r} (configured: {', '.join(sorted(templates)) or 'none'})")
        if self.coalesce_chars < 1 or self.coalesce_ms < 0:
            raise ConfigError("bots.coalesce_chars must be >= 1 and bots.coalesce_ms >= 0")
        if self.first_chunk_timeout_s <= 0 or self.total_timeout_s <= 0:
            raise ConfigError("bots: timeouts must be > 0")


def pick_language(msg: Localised, question: str) -> str:
    """The Chinese text of a localised message for a mostly-CJK question, else the English one."""
    if isinstance(msg, str):
        return msg
    lang = "zh" if is_cjk(question) else "en"
    return msg.get(lang) or msg.get("en") or next(iter(msg.values()))


def _typed(value: Any, typ: type, where: str) -> Any:
    if typ is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ in (str, bool) and isinstance(value, typ):
        return value
    raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")


def _localised(value: Any, where: str) -> Localised:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    raise ConfigError(f"{where}: expected a string or a table of language -> string (en, zh)")


def _backend(name: str, table: Any) -> BackendSpec:
    where = f"bots.backends.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    table = dict(table)
    if "type" not in table:
        raise ConfigError(f"{where}.type: missing (openai, dify, coze, webhook, faq, an entry point name or 'module:factory')")
    spec = BackendSpec(name=name, type=_typed(table.pop("type"), str, f"{where}.type"))
    for key, typ in (
        ("secondary", str),
        ("max_concurrency", int),
        ("queue_wait_s", float),
        ("max_queue", int),
        ("first_chunk_timeout_s", float),
        ("total_timeout_s", float),
        ("cache", bool),
    ):
        if key in table:
            setattr(spec, key, _typed(table.pop(key), typ, f"{where}.{key}"))
    spec.options = table
    return spec


def _tenant(tenant: str, table: Any) -> TenantRule:
    where = f"bots.tenants.{tenant}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    table = dict(table)
    rule = TenantRule()
    if "backend" in table:
        rule.backend = _typed(table.pop("backend"), str, f"{where}.backend")
    rule.groups = _names_by_group(table, "groups", "backend", where)
    if "template" in table:
        rule.template = _typed(table.pop("template"), str, f"{where}.template")
    rule.group_templates = _names_by_group(table, "group_templates", "template", where)
    if "confidence_threshold" in table:
        rule.confidence_threshold = _typed(table.pop("confidence_threshold"), float, f"{where}.confidence_threshold")
    for key in ("holding_message", "handoff_message"):
        if key in table:
            setattr(rule, key, _localised(table.pop(key), f"{where}.{key}"))
    if table:
        raise ConfigError(f"{where}: unknown setting(s): {', '.join(sorted(table))}")
    return rule


def _template(name: str, table: Any) -> Template:
    where = f"bots.templates.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    table = dict(table)
    t = Template(
        name,
        system_prompt=_typed(table.pop("system_prompt"), str, f"{where}.system_prompt") if "system_prompt" in table else None,
        temperature=_typed(table.pop("temperature"), float, f"{where}.temperature") if "temperature" in table else None,
        max_tokens=_typed(table.pop("max_tokens"), int, f"{where}.max_tokens") if "max_tokens" in table else None,
    )
    if table:
        raise ConfigError(f"{where}: unknown setting(s): {', '.join(sorted(table))}")
    if t.temperature is not None and not 0 <= t.temperature <= 2:
        raise ConfigError(f"{where}.temperature: must be 0..2")
    if t.max_tokens is not None and t.max_tokens <= 0:
        raise ConfigError(f"{where}.max_tokens: must be positive")
    return t


def _names_by_group(table: dict[str, Any], key: str, what: str, where: str) -> dict[str, str]:
    """`table[key]` (popped) as group -> `what` name; ConfigError naming `where.key` if it is not one."""
    value = table.pop(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{where}.{key}: expected a table of group = {what} name")
    return dict(value)
