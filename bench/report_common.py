"""What the report and the plots share: targets, number formatting, reading results.json."""

from __future__ import annotations

from typing import Any

TARGETS = {
    "idle_kb_per_conn": 4.0,
    "relay_vs_picows": 0.75,
    "relay_vs_node": 1.5,
    "connections": 100_000,
    "p99_half_peak_ms": 5.0,
}


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _noise(d: dict[str, Any]) -> str:
    """Other processes' CPU: share of the whole machine (share of the server's own CPU)."""
    whole, srv = d.get("noise_pct"), d.get("noise_server_cpu_pct")
    return f"{_fmt(whole)} ({_fmt(srv)})" if srv is not None else _fmt(whole)


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return round(a / b, 3)
    return None


def _servers(results: dict[str, Any], scen: str) -> list[tuple[str, dict[str, Any]]]:
    data = results.get("scenarios", {}).get(scen, {})
    return [(n, r) for n, r in data.items() if isinstance(r, dict)]


def _label(results: dict[str, Any], name: str) -> str:
    if name == "gateway_cluster":
        return "gateway cluster (2 nodes + Redis)"
    return results.get("servers", {}).get(name, {}).get("label", name)


def _lat(lat: dict[str, Any] | None, keys: tuple[str, ...] = ("p50_ms", "p99_ms", "p99_9_ms")) -> str:
    lat = lat or {}
    return " / ".join(_fmt(lat.get(k), 2) for k in keys)


def _status(r: dict[str, Any]) -> str | None:
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    if "error" in r:
        return f"error: {r['error']}"
    return None
