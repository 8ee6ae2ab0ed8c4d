"""Results -> PNG plots (matplotlib): relay latency, idle memory, efficiency, cluster by node count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report_common import TARGETS, _label, _servers


def make_plots(out: Path, results: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    relay = _servers(results, "relay")
    cl = results.get("scenarios", {}).get("cluster", {}).get("gateway")
    if isinstance(cl, dict) and cl.get("steps"):
        relay = relay + [("gateway_cluster", cl)]
    if any(r.get("steps") for _, r in relay):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
        for ax, key, title in zip(axes, ("p50_ms", "p99_ms", "p99_9_ms"), ("p50", "p99", "p99.9"), strict=True):
            for name, r in relay:
                steps = sorted((s for s in r.get("steps", []) if s.get("msgs_per_s")), key=lambda s: s["msgs_per_s"])
                xs = [s["msgs_per_s"] for s in steps if s["latency"].get(key)]
                ys = [s["latency"][key] for s in steps if s["latency"].get(key)]
                if xs:
                    ax.plot(xs, ys, marker="o", label=_label(results, name))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"relay latency {title}")
            ax.set_xlabel("delivered messages / s")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("ms (gateway: one way; peers: echo round trip)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "relay_latency.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    idle = _servers(results, "idle")
    if any(r.get("steps") for _, r in idle):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, r in idle:
            steps = r.get("steps", [])
            if not steps:
                continue
            xs = [0] + [s["connections"] for s in steps]
            a1.plot(xs, [r["base_rss_mb"]] + [s["rss_mb"] for s in steps], marker="o", label=_label(results, name))
            a2.plot(xs[1:], [s["rss_per_conn_kb"] for s in steps], marker="o", label=_label(results, name))
        a1.set_title("server RSS against idle connections")
        a1.set_xlabel("connections")
        a1.set_ylabel("RSS MiB")
        a2.set_title("RSS per connection ((RSS - RSS before) / N)")
        a2.set_xlabel("connections")
        a2.set_ylabel("KB per connection")
        a2.axhline(TARGETS["idle_kb_per_conn"], color="grey", linestyle="--", linewidth=1, label="target 4 KB")
        for ax in (a1, a2):
            ax.grid(True, alpha=0.3)
        handles, labels = a2.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        paths.append(out / "idle_memory.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    by = cl.get("by_nodes") if isinstance(cl, dict) else None
    if by:
        counts = sorted(by, key=int)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        a1.plot([int(n) for n in counts], [by[n].get("msgs_per_gateway_cpu_s") or 0 for n in counts], marker="o")
        a1.set_title("cluster: messages per gateway CPU-s at peak")
        a2.plot([int(n) for n in counts], [by[n].get("p99_ms_at_half_peak") or 0 for n in counts], marker="o")
        a2.set_title("cluster: p99 at half of peak (ms)")
        for ax in (a1, a2):
            ax.set_xlabel("nodes (one Redis)")
            ax.set_xticks([int(n) for n in counts])
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        paths.append(out / "cluster_nodes.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    bars = []
    for scen, title, get in (("relay", "relay: messages per server CPU-s", lambda r: (r.get("peak") or {}).get("msgs_per_cpu_s")),
                             ("fanout", "fan-out: deliveries per server CPU-s",
                              lambda r: (r.get("broadcast") or {}).get("deliveries_per_cpu_s")),
                             ("churn", "churn: cycles per server CPU-s", lambda r: r.get("cycles_per_cpu_s"))):
        vals = [(_label(results, n), get(r)) for n, r in _servers(results, scen)]
        vals = [(n, v) for n, v in vals if v]
        if vals:
            bars.append((title, vals))
    if bars:
        fig, axes = plt.subplots(1, len(bars), figsize=(5 * len(bars), 4.5), squeeze=False)
        from matplotlib.ticker import FuncFormatter

        for ax, (title, vals) in zip(axes[0], bars, strict=True):
            vals = vals[::-1]  # barh draws bottom-up: keep the gateway on top
            ax.barh([n for n, _ in vals], [v for _, v in vals], color=["tab:red" if n.startswith("gateway") else "tab:blue"
                                                                      for n, _ in vals])
            for i, (_, v) in enumerate(vals):
                ax.text(v, i, f" {v / 1000:.1f}k", va="center", fontsize=8)
            ax.set_title(title, fontsize=10)
            ax.tick_params(axis="y", labelsize=8)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
            ax.margins(x=0.2)
            ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        paths.append(out / "efficiency.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
