"""Scenario 4: scaling. Hot-path time against registry size and against contacts per request,
and the peak memory of the server process against registry size, with a plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.context import Context
from bench.data import REGISTERED_FRACTION
from bench.end_to_end import server_index_stats
from bench.hot_path import time_hot_path
from bench.procs import auth_for, discovery_server, running, unthrottled_args
from bench.report import Report
from bench.summary import headline

Json = dict[str, Any]


def by_registry_size(ctx: Context) -> list[Json]:
    sizes = ctx.sizes
    rows: list[Json] = []
    for users in sizes.scaling_users:
        registry = ctx.registry(users)
        index = registry.build_index()
        times = time_hot_path(
            registry.keyring, index, registry.requests(sizes.scaling_requests, sizes.contacts)
        )
        row = {"registry_users": users, **times.summary(sizes.contacts)}
        row["index_bytes_per_user"] = round(index.memory_bytes() / users, 1)
        rows.append(row)
        del index
        ctx.log(f"scaling: {users:,} users -> median {row['median_us']} µs")
    return rows


def by_contacts(ctx: Context) -> tuple[int, list[Json]]:
    sizes = ctx.sizes
    users = max(sizes.scaling_users)
    registry = ctx.registry(users)
    index = registry.build_index()
    rows: list[Json] = []
    for contacts in sizes.scaling_contacts:
        times = time_hot_path(registry.keyring, index, registry.requests(sizes.scaling_requests, contacts))
        rows.append({"contacts": contacts, **times.summary(contacts)})
        ctx.log(f"scaling: {contacts:,} contacts -> median {rows[-1]['median_us']} µs")
    return users, rows


def server_memory(ctx: Context) -> list[Json]:
    rows: list[Json] = []
    extra, _ = unthrottled_args()
    for users in ctx.sizes.server_memory_users:
        data_dir = ctx.store(users)
        workdir = ctx.work / f"memory-{users}"
        with running(discovery_server(data_dir, workdir, auth_for(data_dir), extra)) as server:
            stats = server_index_stats(server, users)
            peak = server.memory_kib().get("VmHWM", 0) * 1024
        row = {
            "registry_users": users,
            "peak_rss_mib": round(peak / 2**20, 1),
            "peak_rss_bytes_per_user": round(peak / users, 1),
            **stats,
        }
        rows.append(row)
        ctx.log(f"scaling: server with {users:,} users -> peak RSS {row['peak_rss_mib']} MiB")
    return rows


def plot(
    path: Path, sizes_rows: list[Json], contact_rows: list[Json], contacts_users: int, memory_rows: list[Json]
) -> str | None:
    """The three curves as one PNG; None (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    users = [r["registry_users"] for r in sizes_rows]
    ax.plot(users, [r["median_us"] for r in sizes_rows], "o-", label="median")
    ax.plot(users, [r["p99_us"] for r in sizes_rows], "s--", label="p99")
    ax.set(
        xscale="log",
        xlabel="registered users",
        ylabel="µs per request",
        title="Hot path, 1,000 contacts per request",
    )
    ax.set_ylim(bottom=0)
    ax.legend()
    ax = axes[1]
    contacts = [r["contacts"] for r in contact_rows]
    ax.plot(contacts, [r["median_us"] for r in contact_rows], "o-", label="median µs per request")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="contacts per request",
        ylabel="µs per request",
        title=f"Hot path, {contacts_users:,} users",
    )
    twin = ax.twinx()
    twin.plot(
        contacts, [r["ns_per_contact"] for r in contact_rows], "^:", color="tab:green", label="ns per contact"
    )
    twin.set(ylabel="ns per contact", yscale="log")
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper center")
    ax = axes[2]
    mem_users = [r["registry_users"] for r in memory_rows]
    ax.plot(mem_users, [r["peak_rss_mib"] for r in memory_rows], "o-", label="server peak RSS")
    if all("index_memory_bytes" in r for r in memory_rows):
        ax.plot(
            mem_users, [r["index_memory_bytes"] / 2**20 for r in memory_rows], "s--", label="index arrays"
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="registered users",
        ylabel="MiB",
        title="Server memory (embedded store)",
    )
    ax.legend()
    for a in axes:
        a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def run(ctx: Context) -> Report:
    sizes = ctx.sizes
    report = Report(
        "scaling",
        {
            "registry_users": list(sizes.scaling_users),
            "contacts_per_request": list(sizes.scaling_contacts),
            "requests_per_point": sizes.scaling_requests,
            "server_memory_users": list(sizes.server_memory_users),
            "registered_fraction": REGISTERED_FRACTION,
        },
    )
    size_rows = by_registry_size(ctx)
    contacts_users, contact_rows = by_contacts(ctx)
    memory_rows = server_memory(ctx)
    report.results.update(
        by_registry_size=size_rows,
        by_contacts=contact_rows,
        by_contacts_registry_users=contacts_users,
        server_memory=memory_rows,
    )
    png = plot(ctx.out / "scaling.png", size_rows, contact_rows, contacts_users, memory_rows)
    if png:
        report.plots.append(png)
    else:
        report.notes.append("no plot: matplotlib is not installed (pip install -e '.[bench]')")
    first, last = size_rows[0], size_rows[-1]
    top_memory = memory_rows[-1]
    report.results["headline"] = [
        headline(
            f"hot path median from {first['registry_users']:,} to {last['registry_users']:,} users",
            f"{first['median_us']:.0f} → {last['median_us']:.0f}",
            "µs",
        ),
        headline(
            f"hot path at {contact_rows[-1]['contacts']:,} contacts per request",
            contact_rows[-1]["median_us"],
            "µs",
            f"{contact_rows[-1]['ns_per_contact']} ns per contact",
        ),
        headline(
            f"server peak RSS, {top_memory['registry_users']:,} users",
            top_memory["peak_rss_mib"],
            "MiB",
            f"{top_memory['peak_rss_bytes_per_user']} bytes per user",
        ),
    ]
    return report
