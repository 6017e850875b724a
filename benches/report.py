#!/usr/bin/env python3
"""Writes BENCHMARKS.md and docs/bench/*.svg from benches/results/*.json (made by benches/run.sh).

The tables and verdicts are computed from the results; the prose under each row comes from
benches/analysis.md (sections headed `## <row>`), written by whoever ran the benchmarks and read the profiles.
Standard library only."""

import json
import math
import os
import re
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benches", "results")
CHARTS = os.path.join(ROOT, "docs", "bench")


def load(name):
    path = os.path.join(RESULTS, name + ".json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def analysis():
    path = os.path.join(ROOT, "benches", "analysis.md")
    sections = {}
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return sections
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        head, _, body = part.partition("\n")
        sections[head.strip()] = body.strip()
    return sections


def num(v, digits=0, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float) and digits == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.{digits}f}x"


def verdict(ok):
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**missed**"


def lat(d, q):
    return None if d is None else d["latency_ms"].get(q)


def cpu(d):
    return None if d is None or not d.get("server") else d["server"]["cpu_cores"]


# ---------------------------------------------------------------------------------------------- charts


def nice_ticks(lo, hi, log):
    if log:
        ticks = []
        e = math.floor(math.log10(lo))
        while 10**e <= hi * 1.0001:
            for m in (1, 2, 5):
                v = m * 10**e
                if lo * 0.9999 <= v <= hi * 1.0001:
                    ticks.append(v)
            e += 1
        return ticks
    span = hi - lo or 1
    step = 10 ** math.floor(math.log10(span / 5))
    for m in (1, 2, 2.5, 5, 10):
        if span / (step * m) <= 6:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def label(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


COLOURS = {"chatd": "#2563eb", "bare-ws": "#16a34a", "nats": "#dc2626", "bare-longpoll": "#16a34a"}


def line_chart(path, title, xlabel, ylabel, series, xlog=False, ylog=False):
    """series: [(name, colour, dash, [(x, y), ...])]. Writes an SVG file."""
    points = [p for _, _, _, pts in series for p in pts if p[1] is not None and p[1] > 0]
    if not points:
        return False
    w, h, left, right, top, bottom = 720, 420, 80, 170, 40, 56
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = (min(ys) / 1.5, max(ys) * 1.5) if ylog else (0, max(ys) * 1.1)
    if xlo == xhi:
        xlo, xhi = xlo / 2, xhi * 2

    def fx(x):
        if xlog:
            return left + (math.log10(x) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo)) * (w - left - right)
        return left + (x - xlo) / (xhi - xlo) * (w - left - right)

    def fy(y):
        if ylog:
            return h - bottom - (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * (h - top - bottom)
        return h - bottom - (y - ylo) / (yhi - ylo) * (h - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
    ]
    for t in nice_ticks(ylo if ylog else 0, yhi, ylog):
        y = fy(t)
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label(t)}</text>')
    for t in nice_ticks(xlo, xhi, xlog) if xlog else sorted(set(xs)):
        x = fx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{h - bottom}" stroke="#f3f4f6"/>')
        out.append(f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{label(t)}</text>')
    out.append(
        f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" fill="none" stroke="#9ca3af"/>'
    )
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 14}" text-anchor="middle">{xlabel}</text>')
    out.append(
        f'<text x="18" y="{(top + h - bottom) / 2}" text-anchor="middle" transform="rotate(-90 18 {(top + h - bottom) / 2})">{ylabel}</text>'
    )
    for i, (name, colour, dash, pts) in enumerate(series):
        pts = sorted(p for p in pts if p[1] is not None and p[1] > 0)
        if not pts:
            continue
        d = " ".join(f"{'M' if j == 0 else 'L'}{fx(x):.1f},{fy(y):.1f}" for j, (x, y) in enumerate(pts))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr}/>')
        for x, y in pts:
            out.append(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3.5" fill="{colour}"/>')
        ly = top + 16 + i * 20
        out.append(
            f'<line x1="{w - right + 14}" x2="{w - right + 40}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"{dash_attr}/>'
        )
        out.append(f'<text x="{w - right + 46}" y="{ly}">{name}</text>')
    out.append("</svg>")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


# ---------------------------------------------------------------------------------------------- rows


def sizes(prefix):
    found = set()
    if not os.path.isdir(RESULTS):
        return []
    for name in os.listdir(RESULTS):
        m = re.match(prefix + r"-(\d+)-", name)
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def nodes_of(d):
    return len((d.get("parameters", {}).get("url") or "").split(",")) if d else 0


def cluster(summary, section):
    """The PostgreSQL and cluster rows (SPEC §12)."""
    # Durable sends on PostgreSQL beside SQLite, in turn in the same run.
    lines = []
    runs = []
    for n in sorted({int(m.group(1)) for m in (re.match(r"pg-durable-(\d+)-", f) for f in listdir()) if m}):
        runs.append((n, load(f"pg-durable-{n}-sqlite"), load(f"pg-durable-{n}-pg")))
    commit = load("pg-commit")
    if runs or commit:
        lines += [
            "Each sender posts to its own channel, one request in flight; chatd on SQLite and on PostgreSQL (one",
            "node, `DBURL=postgres://...`), a fresh database each, run in turn.",
            "",
            "| senders | store | acknowledged/s | p50 ms | p99 ms | p99.9 ms | server CPU (cores) | PostgreSQL / SQLite |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, sq, pq in runs:
            for name, d in (("SQLite", sq), ("PostgreSQL", pq)):
                if d:
                    lines.append(
                        f"| {n} | {name} | {num(d.get('acks_per_s'))} | {num(lat(d, 'p50'), 2)} | {num(lat(d, 'p99'), 2)} | "
                        f"{num(lat(d, 'p99_9'), 2)} | {num(cpu(d), 2)} | "
                        f"{ratio(pq and pq.get('acks_per_s'), sq and sq.get('acks_per_s')) if name == 'PostgreSQL' else ''} |"
                    )
        if commit:
            c = commit["latency_ms"]
            lines.append(
                f"| 1 | bare PostgreSQL commit (pgbench, one row) | {num(commit['commits_per_s'])} | {num(c['p50'], 2)} | "
                f"{num(c['p99'], 2)} | {num(c['p99_9'], 2)} | – | |"
            )
        many = [(sq, pq) for n, sq, pq in runs if n > 1 and sq and pq]
        if many:
            sq = max((x.get("acks_per_s") or 0 for x, _ in many))
            pq = max((y.get("acks_per_s") or 0 for _, y in many))
            summary.append(
                ("Durable messages on PostgreSQL, one node", ">= 0.5x SQLite's", num(pq, 0, "/s"), num(sq, 0, "/s (SQLite)"), ratio(pq, sq), verdict(pq / sq >= 0.5 if sq else None))
            )
        one = next((pq for n, _, pq in runs if n == 1 and pq), None)
        if one and commit:
            p, c99 = lat(one, "p99"), commit["latency_ms"]["p99"]
            summary.append(
                ("Single durable message on PostgreSQL", "p99 <= bare commit p99 + 5 ms", num(p, 2, " ms"), num(c99, 2, " ms (pgbench commit)"), f"+{p - c99:.2f} ms", verdict(p <= c99 + 5))
            )
    section("pg-durable", "PostgreSQL: durable messages", lines or ["Not measured."])

    # Fan-out over the cluster's nodes.
    lines = []
    found = sorted(int(m.group(1)) for m in (re.match(r"cluster-fanout-(\d+)\.json$", f) for f in listdir()) if m)
    if found:
        lines += [
            "One channel; its members' gateway connections spread round-robin over the nodes, one sender on the",
            "writer (node 1). Server CPU is node 1's.",
            "",
            "| members | nodes | identified | open at the end | messages | delivered / expected | deliveries/s | p50 ms | p99 ms | p99.9 ms | node 1 CPU (cores) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n in found:
            d = load(f"cluster-fanout-{n}")
            lines.append(
                f"| {n:,} | {nodes_of(d)} | {d['connections']['ready']:,} | {d['connections']['open_at_end']:,} | {d['sent']:,} | "
                f"{d['delivered']:,} / {d['expected']:,} | {num(d['deliveries_per_s'])} | {num(lat(d, 'p50'), 1)} | "
                f"{num(lat(d, 'p99'), 1)} | {num(lat(d, 'p99_9'), 1)} | {num(cpu(d), 2)} |"
            )
        d = load(f"cluster-fanout-{found[-1]}")
        ready = d["connections"]["ready"]
        ok = ready >= 57000 and d["delivered"] == d["expected"] and d["sent"] > 0 and d["errors"]["closed"] == 0
        summary.append(
            (f"Cluster fan-out, {nodes_of(d)} nodes, one channel", ">= 57k identified, every message to all", f"{ready:,} identified, {num(d['deliveries_per_s'], 0, '/s')}, p99 {num(lat(d, 'p99'), 1)} ms", "–", "–", verdict(ok))
        )
    section("cluster-fanout", "Cluster: fan-out to one channel over the nodes", lines or ["Not measured."])

    # Rooms over the cluster's nodes against one node: the two sides took turns, compared by their medians.
    lines = []
    def runs_of(prefix):
        found = sorted(int(m.group(1)) for m in (re.match(prefix + r"-(\d+)\.json$", f) for f in listdir()) if m)
        return [(k, load(f"{prefix}-{k}")) for k in found]
    peak, sqlite = load("cluster-rooms-max-pg"), load("rooms-20-chatd")
    ones, manys = runs_of("cluster-rooms-20-pg"), runs_of("cluster-rooms-20-cluster")
    if ones or manys:
        if peak:
            lines += [
                f"20% of the most one node on PostgreSQL delivers unpaced: {num(peak['deliveries_per_s'])} deliveries/s = "
                f"{num(peak['deliveries_per_s'] / peak['parameters']['room_size'])} messages/s in rooms of "
                f"{peak['parameters']['room_size']}. In the cluster each room's members are spread over the nodes"
                " (connection i on node i mod n) and every message is sent through node 1, the writer. The p99 of"
                " one phase swings by several times from run to run on PostgreSQL (fsync stalls), so the two sides"
                " took turns, run by run, and are compared by their medians.",
                "",
            ]
        lines += [
            "| where | run | connections | messages/s | delivered / expected | p50 ms | p95 ms | p99 ms | p99.9 ms | node 1 CPU (cores) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        many0 = manys[0][1] if manys else None
        rows = [(f"cluster, {nodes_of(many0)} nodes, PostgreSQL", k, d) for k, d in manys]
        rows += [("one node, PostgreSQL", k, d) for k, d in ones]
        if sqlite:
            rows.append(("one node, SQLite (row rooms, 20%; its own max)", 1, sqlite))
        for name, k, d in rows:
            lines.append(
                f"| {name} | {k} | {d['connections']['ready']:,} | {num(d['parameters']['rate'])} | {d['delivered']:,} / {d['expected']:,} | "
                f"{num(lat(d, 'p50'), 2)} | {num(lat(d, 'p95'), 2)} | {num(lat(d, 'p99'), 2)} | {num(lat(d, 'p99_9'), 2)} | {num(cpu(d), 2)} |"
            )
        if ones and manys:
            p = statistics.median(lat(d, "p99") for _, d in manys)
            b = statistics.median(lat(d, "p99") for _, d in ones)
            p50 = statistics.median(lat(d, "p50") for _, d in manys)
            b50 = statistics.median(lat(d, "p50") for _, d in ones)
            lines += ["", f"Medians over {len(manys)} and {len(ones)} runs: p50 {p50:.2f} ms against {b50:.2f} ms, p99 {p:.2f} ms against {b:.2f} ms."]
            complete = all(d["delivered"] == d["expected"] for _, d in manys)
            summary.append(
                (f"Cluster rooms of 10, {many0['connections']['ready']:,} connections, 20% load", "p99 <= 2x one node's", num(p, 2, " ms (median)"), num(b, 2, " ms (one node, PostgreSQL, median)"), ratio(p, b), verdict(p <= 2 * b and complete))
            )
    section("cluster-rooms", "Cluster: rooms of 10 over the nodes", lines or ["Not measured."])

    # Writer failover.
    lines = []
    fo = load("cluster-failover")
    if fo:
        lines += [
            f"{fo['nodes']} nodes, {fo['senders']} senders (one request in flight each, every message with a nonce, a failed "
            f"request sent again to the next node), LEASE_TTL {fo['lease_ttl']}; the writer killed with SIGKILL "
            f"{len(fo['kills'])} times and started again as a follower. Times from the kill, in ms (`benches/failover.py`).",
            "",
            "| kill | node | a node reports itself writer | first write acknowledged | every sender acknowledged |",
            "|---|---|---|---|---|",
        ]
        for i, k in enumerate(fo["kills"], 1):
            if "timed_out_after_ms" in k:
                lines.append(f"| {i} | {k['killed_node']} | – | – | none within {num(k['timed_out_after_ms'])} |")
            else:
                lines.append(
                    f"| {i} | {k['killed_node']} | {num(k.get('takeover_ms'))} | {num(k['first_ack_ms'])} | {num(k['all_senders_ms'])} |"
                )
        h = fo["history"]
        lines += [
            "",
            f"Acknowledged: {fo['acknowledged']:,} messages ({fo['resent']:,} requests sent again); in the channel's history "
            f"afterwards: {h['missing']} of them missing, {h['doubled']} twice or more.",
        ]
        p99 = fo["all_senders_ms"]["p99"]
        ok = p99 is not None and p99 <= 5000 and fo["timed_out"] == 0 and h["missing"] == 0 and h["doubled"] == 0
        summary.append(
            (f"Cluster writer killed, {len(fo['kills'])} times", "writes again within 5 s (p99)", num(p99, 0, " ms") + f" (max {num(fo['all_senders_ms']['max'], 0, ' ms')})", "–", "–", verdict(ok))
        )
    section("cluster-failover", "Cluster: the writer killed under load", lines or ["Not measured."])


def federation(summary, section):
    """The federation rows (SPEC §13): two linked servers (benches/federation.py)."""
    lines = []
    def runs_of(prefix):
        found = sorted(int(m.group(1)) for m in (re.match(prefix + r"-(\d+)\.json$", f) for f in listdir()) if m)
        return [(k, load(f"{prefix}-{k}")) for k in found]

    throughput = runs_of("federation-throughput")
    if throughput:
        lines += [
            "Two chatd servers on 127.0.0.1 (each its own SQLite database), linked both ways. The sender posts on",
            "server A over HTTP; the receivers are gateway connections on server B: every message is committed on",
            "A, relayed in a signed batch, applied on B and delivered there. Load generator, A and B share the two",
            "cores; each run on fresh servers.",
            "",
            "| run | receivers on B | messages | delivered / expected | messages/s relayed and delivered | p50 ms | p99 ms | B's CPU (cores) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rates = []
        for k, t in throughput:
            n = t["parameters"]["conns"]
            per_s = t["deliveries_per_s"] / n
            rates.append(per_s)
            lines.append(
                f"| {k} | {n} | {t['sent']:,} | {t['delivered']:,} / {t['expected']:,} | {num(per_s)} | "
                f"{num(lat(t, 'p50'), 1)} | {num(lat(t, 'p99'), 1)} | {num(cpu(t), 2)} |"
            )
        per_s = statistics.median(rates)
        lines += ["", f"Median: {num(per_s)} messages/s."]
        ok = per_s >= 10000 and all(t["delivered"] == t["expected"] for _, t in throughput)
        summary.append(
            ("Federation: relay throughput, two servers", ">= 10k messages/s delivered on the far side", num(per_s, 0, "/s (median)"), "–", "–", verdict(ok))
        )

    local, linked = runs_of("federation-latency-local"), runs_of("federation-latency-linked")
    if local and linked:
        rate = linked[0][1]["parameters"]["rate"]
        lines += [
            "",
            f"At 20% of that rate ({num(rate)} messages/s), the same receivers on B, the sender on B itself (local) or on A"
            " (linked), taking turns; the link's cost is the difference of the medians.",
            "",
            "| sender | run | delivered / expected | p50 ms | p95 ms | p99 ms | p99.9 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, runs in (("on B (local)", local), ("on A (linked)", linked)):
            for k, d in runs:
                lines.append(
                    f"| {name} | {k} | {d['delivered']:,} / {d['expected']:,} | {num(lat(d, 'p50'), 2)} | {num(lat(d, 'p95'), 2)} | "
                    f"{num(lat(d, 'p99'), 2)} | {num(lat(d, 'p99_9'), 2)} |"
                )
        p = statistics.median(lat(d, "p99") for _, d in linked)
        b = statistics.median(lat(d, "p99") for _, d in local)
        lines += ["", f"Medians: p99 {p:.2f} ms linked against {b:.2f} ms local: the link adds {p - b:+.2f} ms."]
        complete = all(d["delivered"] == d["expected"] for _, d in linked)
        summary.append(
            ("Federation: latency the link adds at 20% load", "p99 +10 ms at most", num(p, 2, " ms (median)"), num(b, 2, " ms (sender on B, median)"), f"{p - b:+.2f} ms", verdict(p - b <= 10 and complete))
        )

    d = load("federation-drain")
    if d:
        lines += [
            "",
            f"B stopped (SIGSTOP) for {num(d['down_s'], 1)} s while {num(d['load_msgs_per_s'])} messages/s were sent on A"
            " (durable-send, 16 senders), then continued, the load going on: A's outbox for B, read from A's"
            " `/api/v1/federation/status` every 100 ms.",
            "",
            "| events in A's outbox when B returned | caught up after | outbox events/s while draining | ops/s B took while draining | ops B took |",
            "|---|---|---|---|---|",
            f"| {num(d['lag_events_at_return'])} | {num(d['caught_up_s'], 2)} s | {num(d['events_per_s_draining'])} | "
            f"{num(d['ops_per_s_draining'])} | {num(d['ops_taken_by_b'])} |",
        ]
        summary.append(
            (f"Federation: a peer down {num(d['down_s'], 0)} s under load catches up", "measured", f"{num(d['caught_up_s'], 2)} s, {num(d['ops_per_s_draining'], 0, ' ops/s')}", "–", "–", "measured" if d["caught_up_s"] else "**not caught up**")
        )
    section("federation", "Federation: two linked servers", lines or ["Not measured."])


def irc(summary, section):
    """The IRC door's rows (SPEC §14): idle connections, and fan-out beside the bare line-broadcast server."""
    lines = []
    d = load("irc-idle-chatd")
    if d:
        srv = d.get("server") or {}
        lines += [
            "Registered IRC connections (each a guest's session made over HTTP and continued with PASS), held by",
            "chatd's IRC door; the load generator answers the door's PINGs.",
            "",
            "| asked | registered | open at the end | dropped | held | RSS before (MiB) | RSS peak (MiB) | RSS per connection (KiB) | CPU (cores) |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {d['connections']['target']:,} | {d['connections']['ready']:,} | {d['connections']['open_at_end']:,} | "
            f"{d['errors']['closed']} | {num(d['duration_s'])} s | {num(srv.get('rss_before_connect_mib'), 1)} | "
            f"{num(srv.get('rss_peak_mib'), 1)} | {num(srv.get('rss_per_connection_kib'), 1)} | {num(srv.get('cpu_cores'), 3)} |",
            "",
        ]
        held = d["connections"]["open_at_end"]
        ok = held >= 19000 and d["errors"]["closed"] == 0 and d["duration_s"] >= 300
        summary.append(
            ("IRC: idle registered connections, 5 min", ">= 19,000, none dropped", f"{held:,} held, {d['errors']['closed']} dropped, "
             + num(srv.get("rss_per_connection_kib"), 1, " KiB/conn"), "–", "–", verdict(ok))
        )
    runs = sorted(
        int(m.group(1)) for m in (re.match(r"irc-fanout-(\d+)-chatd-irc\.json$", f) for f in listdir()) if m
    )
    for n in runs:
        c, b = load(f"irc-fanout-{n}-chatd-irc"), load(f"irc-fanout-{n}-bare-irc")
        lines += [
            f"Fan-out to one channel of {n:,} IRC connections, one IRC sender, unpaced, the same `--window`:",
            "",
            "| server | delivered / expected | deliveries/s | p50 ms | p99 ms | server CPU (cores) | RSS per connection (KiB) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, d in (("chatd (IRC door)", c), ("bare-irc", b)):
            if d:
                lines.append(
                    f"| {name} | {d['delivered']:,} / {d['expected']:,} | {num(d['deliveries_per_s'])} | "
                    f"{num(lat(d, 'p50'), 1)} | {num(lat(d, 'p99'), 1)} | {num(cpu(d), 2)} | "
                    f"{num((d.get('server') or {}).get('rss_per_connection_kib'), 1)} |"
                )
        lines.append("")
        if c and b:
            r = c["deliveries_per_s"] / b["deliveries_per_s"] if b["deliveries_per_s"] else None
            ok = r is not None and r >= 1.0 and c["delivered"] == c["expected"]
            summary.append(
                (f"IRC: fan-out to {n:,} connections", ">= 1.0x bare-irc", num(c["deliveries_per_s"], 0, "/s"),
                 num(b["deliveries_per_s"], 0, "/s"), ratio(c["deliveries_per_s"], b["deliveries_per_s"]), verdict(ok))
            )
    section("irc", "IRC: the IRC door", lines or ["Not measured."])


def listdir():
    return os.listdir(RESULTS) if os.path.isdir(RESULTS) else []


def main():
    notes = analysis()
    machine = load("machine") or {}
    summary = []
    body = []

    def section(row, title, lines):
        body.append(f"## {title}\n")
        body.extend(lines)
        if notes.get(row):
            body.append("")
            body.append(notes[row])
        body.append("")

    # Idle connections.
    c, b = load("idle-chatd"), load("idle-bare-ws")
    lines = []
    if c:
        rows = []
        for name, d in (("chatd", c), ("bare-ws", b)):
            if not d:
                continue
            s = d.get("server") or {}
            rows.append(
                f"| {name} | {d['connections']['target']:,} | {d['connections']['ready']:,} | "
                f"{d['connections']['open_at_end']:,} | {d['errors']['closed']} | {num(d['duration_s'])} s | "
                f"{num(s.get('rss_before_connect_mib'), 1)} | {num(s.get('rss_peak_mib'), 1)} | "
                f"{num(s.get('rss_per_connection_kib'), 1)} | {num(s.get('cpu_cores'), 3)} |"
            )
        lines += [
            "| server | asked | identified | open at the end | dropped | held | RSS before (MiB) | RSS peak (MiB) | RSS per connection (KiB) | CPU (cores) |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
        per_c = (c.get("server") or {}).get("rss_per_connection_kib")
        per_b = ((b or {}).get("server") or {}).get("rss_per_connection_kib")
        held = c["connections"]["open_at_end"]
        ok_held = held >= 19000 and c["errors"]["closed"] == 0
        ok_rss = None if per_c is None or per_b is None else per_c / per_b <= 1.5
        lines.append("")
        lines.append(f"RSS per connection, chatd / bare-ws: {ratio(per_c, per_b)} (target <= 1.5x).")
        summary.append(
            ("Idle gateway connections held", ">= 19k for 5 min, none dropped", f"{held:,} open, {c['errors']['closed']} dropped", "–", "–", verdict(ok_held))
        )
        summary.append(
            ("RSS per idle connection", "<= 1.5x bare-ws", num(per_c, 1, " KiB"), num(per_b, 1, " KiB"), ratio(per_c, per_b), verdict(ok_rss))
        )
    section("idle", "Idle gateway connections", lines or ["Not measured."])

    # Fan-out.
    ns = sizes("fanout")
    lines = []
    if ns:
        lines += [
            "| members | server | delivered / expected | deliveries/s | p50 ms | p99 ms | p99.9 ms | server CPU (cores) | chatd / this |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        chart = {s: [] for s in ("chatd", "bare-ws", "nats")}
        for n in ns:
            base = load(f"fanout-{n}-chatd")
            for s in ("chatd", "bare-ws", "nats"):
                d = load(f"fanout-{n}-{s}")
                if not d:
                    continue
                chart[s].append((n, d["deliveries_per_s"]))
                lines.append(
                    f"| {n:,} | {s} | {d['delivered']:,} / {d['expected']:,} | {num(d['deliveries_per_s'])} | "
                    f"{num(lat(d, 'p50'), 1)} | {num(lat(d, 'p99'), 1)} | {num(lat(d, 'p99_9'), 1)} | {num(cpu(d), 2)} | "
                    f"{ratio(base and base['deliveries_per_s'], d['deliveries_per_s']) if s != 'chatd' else ''} |"
                )
        if line_chart(
            os.path.join(CHARTS, "fanout.svg"),
            "Fan-out: deliveries/s against channel size",
            "members in the channel (log)",
            "deliveries/s",
            [(s, COLOURS[s], "", chart[s]) for s in chart],
            xlog=True,
        ):
            lines += ["", "![deliveries/s against channel size](docs/bench/fanout.svg)"]
        top = max(ns)
        c, b, n_ = (load(f"fanout-{top}-{s}") for s in ("chatd", "bare-ws", "nats"))
        cv = c and c["deliveries_per_s"]
        bv = b and b["deliveries_per_s"]
        nv = n_ and n_["deliveries_per_s"]
        summary.append(
            (f"Fan-out, one channel of {top:,}", ">= 0.8x bare-ws", num(cv, 0, "/s"), num(bv, 0, "/s"), ratio(cv, bv), verdict(None if not (cv and bv) else cv / bv >= 0.8))
        )
        summary.append(
            (f"Fan-out, one channel of {top:,}", ">= 2x nats-server", num(cv, 0, "/s"), num(nv, 0, "/s"), ratio(cv, nv), verdict(None if not (cv and nv) else cv / nv >= 2))
        )
    section("fanout", "Fan-out to one channel", lines or ["Not measured."])

    # Rooms: latency against load.
    lines = []
    peak = load("rooms-max-chatd")
    pcts = sorted(
        {int(m.group(1)) for m in (re.match(r"rooms-(\d+)-", f) for f in os.listdir(RESULTS) if os.path.isdir(RESULTS)) if m}
    ) if os.path.isdir(RESULTS) else []
    if peak or pcts:
        if peak:
            lines.append(
                f"Saturation (chatd, unpaced): {num(peak['deliveries_per_s'])} deliveries/s = "
                f"{num(peak['deliveries_per_s'] / peak['parameters']['room_size'])} messages/s to "
                f"{peak['connections']['ready']:,} connections in rooms of {peak['parameters']['room_size']}, "
                f"server CPU {num(cpu(peak), 2)} cores."
            )
            lines.append("")
        lines += [
            "| load | messages/s | server | delivered / expected | p50 ms | p95 ms | p99 ms | p99.9 ms | server CPU (cores) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        series = {}
        for pct in pcts:
            for s in ("chatd", "bare-ws"):
                d = load(f"rooms-{pct}-{s}")
                if not d:
                    continue
                rate = d["parameters"]["rate"]
                series.setdefault((s, "p50"), []).append((rate, lat(d, "p50")))
                series.setdefault((s, "p99"), []).append((rate, lat(d, "p99")))
                lines.append(
                    f"| {pct}% | {num(rate)} | {s} | {d['delivered']:,} / {d['expected']:,} | {num(lat(d, 'p50'), 2)} | "
                    f"{num(lat(d, 'p95'), 2)} | {num(lat(d, 'p99'), 2)} | {num(lat(d, 'p99_9'), 2)} | {num(cpu(d), 2)} |"
                )
        if line_chart(
            os.path.join(CHARTS, "rooms-latency.svg"),
            "Rooms of 10: delivery latency against load",
            "messages/s",
            "latency (ms, log)",
            [
                (f"{s} {q}", COLOURS[s], "" if q == "p50" else "6 4", pts)
                for (s, q), pts in sorted(series.items())
            ],
            ylog=True,
        ):
            lines += ["", "![latency against load](docs/bench/rooms-latency.svg)"]
        d = load("rooms-20-chatd")
        bd = load("rooms-20-bare-ws")
        if d:
            ok = lat(d, "p50") <= 2 and lat(d, "p99") <= 10 and d["delivered"] == d["expected"]
            summary.append(
                (
                    f"Rooms of 10, {d['connections']['ready']:,} connections, 20% load",
                    "p50 <= 2 ms, p99 <= 10 ms",
                    f"p50 {num(lat(d, 'p50'), 2)}, p99 {num(lat(d, 'p99'), 2)} ms",
                    f"p50 {num(lat(bd, 'p50'), 2)}, p99 {num(lat(bd, 'p99'), 2)} ms" if bd else "–",
                    ratio(lat(d, "p99"), lat(bd, "p99")) + " (p99)" if bd else "–",
                    verdict(ok),
                )
            )
    section("rooms", "End-to-end latency in rooms of 10", lines or ["Not measured."])

    # Long-poll.
    lines = []
    ns = sizes("longpoll")
    if ns:
        lines += [
            "| parked | server | messages/s asked | polls completed/s | wake p50 ms | wake p99 ms | errors | server CPU (cores) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n in ns + ["wake"]:
            for s in ("chatd", "bare-longpoll"):
                d = load(f"longpoll-{n}-{s}") if n != "wake" else load(f"wake-1000-{s}")
                if not d:
                    continue
                polls = (d.get("polls") or {}).get("per_s")
                lines.append(
                    f"| {d['parameters']['conns']:,}{' (wake-up)' if n == 'wake' else ''} | {s} | {num(d['parameters']['rate'])} | {num(polls)} | "
                    f"{num(lat(d, 'p50'), 1)} | {num(lat(d, 'p99'), 1)} | {d['errors']['total']} | {num(cpu(d), 2)} |"
                )
        for n in ns:
            c, b = load(f"longpoll-{n}-chatd"), load(f"longpoll-{n}-bare-longpoll")
            cp = c and (c.get("polls") or {}).get("per_s")
            bp = b and (b.get("polls") or {}).get("per_s")
            summary.append(
                (f"Long-poll, {n:,} parked", ">= 0.7x bare polls/s", num(cp, 0, "/s"), num(bp, 0, "/s"), ratio(cp, bp), verdict(None if not (cp and bp) else cp / bp >= 0.7))
            )
        c, b = load("wake-1000-chatd"), load("wake-1000-bare-longpoll")
        if c and b:
            summary.append(
                ("Long-poll wake-up, 1,000 parked", "p99 <= 1.5x bare", num(lat(c, "p99"), 1, " ms"), num(lat(b, "p99"), 1, " ms"), ratio(lat(c, "p99"), lat(b, "p99")), verdict(None if lat(c, "p99") is None or lat(b, "p99") is None else lat(c, "p99") <= 1.5 * lat(b, "p99")))
            )
    section("longpoll", "Long-poll", lines or ["Not measured."])

    # Durable messages.
    lines = []
    senders = sizes("durable")
    runs = [(n, load(f"durable-{n}-chatd")) for n in senders]
    runs = [(n, d) for n, d in runs if d]
    one = load("durable-1-chatd")
    disk = load("disk")
    many = max((d for n, d in runs if n > 1), key=lambda d: d.get("acks_per_s") or 0, default=None)
    if runs or disk:
        lines += [
            "| what | acknowledged/s | p50 ms | p99 ms | p99.9 ms | server CPU (cores) |",
            "|---|---|---|---|---|---|",
        ]
        for n, d in runs:
            who = f"chatd, {n} sender{'s' if n > 1 else ''}, one request in flight each"
            lines.append(
                f"| {who} | {num(d.get('acks_per_s'))} | {num(lat(d, 'p50'), 2)} | {num(lat(d, 'p99'), 2)} | {num(lat(d, 'p99_9'), 2)} | {num(cpu(d), 2)} |"
            )
        if disk:
            f = disk["fdatasync_ms"]
            sq = disk["sqlite_wal_full"]
            lines.append(f"| fdatasync of a 4 KiB write | – | {num(f['p50'], 2)} | {num(f['p99'], 2)} | – | – |")
            lines.append(f"| SQLite WAL FULL, one row per commit | {num(sq['single_row_commits_per_s'])} | – | – | – | – |")
            lines.append(f"| SQLite WAL FULL, 1000-row transactions (rows) | {num(sq['rows_per_s_in_1000_row_transactions'])} | – | – | – | – |")
        if many:
            a = many.get("acks_per_s")
            summary.append(("Durable messages", ">= 50k/s", num(a, 0, "/s"), num(disk and disk["sqlite_wal_full"]["rows_per_s_in_1000_row_transactions"], 0, " rows/s (SQLite, 1000-row transactions)"), "– (a floor, not a peer)", verdict(a is not None and a >= 50000)))
        if one and disk:
            p = lat(one, "p99")
            f99 = disk["fdatasync_ms"]["p99"]
            summary.append(("Single durable message", "p99 <= fdatasync p99 + 5 ms", num(p, 2, " ms"), num(f99, 2, " ms (fdatasync)"), f"+{p - f99:.2f} ms", verdict(p <= f99 + 5)))
    section("durable", "Durable messages", lines or ["Not measured."])

    # Search.
    lines = []
    sc = load("scale")
    if sc:
        lines += [
            f"Database: {sc['messages']:,} messages, {num(sc['db_mib'])} MiB, built by the scale bench. Queries as a user on 8 of 200 channels, 25 results a page.",
            "",
            "| query | chat-store p50 ms | p95 ms | bare FTS5 p50 ms | p95 ms | ratio p95 | hits a query | mismatches |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k in sc["search"]["kinds"] + [dict(sc["search"]["overall"], kind="all kinds")]:
            st, ba = k["store"], k["bare"]
            lines.append(
                f"| {k['kind']} | {num(st['p50_ms'], 2)} | {num(st['p95_ms'], 2)} | {num(ba['p50_ms'], 2)} | {num(ba['p95_ms'], 2)} | {num(k['ratio_p95'], 2)}x | {num(st.get('hits_per_query'), 1)} | {k['mismatches']} |"
            )
        o = sc["search"]["overall"]
        summary.append(("Search, 1M messages", "p95 <= 20 ms", num(o["store"]["p95_ms"], 2, " ms"), num(o["bare"]["p95_ms"], 2, " ms (bare FTS5)"), f"{o['ratio_p95']:.2f}x", verdict(o["store"]["p95_ms"] <= 20)))
    section("search", "Search", lines or ["Not measured."])

    # Restart.
    lines = []
    rs = load("restart")
    if rs:
        med = statistics.median(rs["chatd_restart_ms"])
        bare = statistics.median(rs["bare_start_ms"])
        lines += [
            f"chatd started on a copy of `{rs['database']}` ({num(rs['database_mib'])} MiB); the time from exec to the first 200 from `/.well-known/healthcheck.json`.",
            "",
            "| what | runs (ms) | median ms |",
            "|---|---|---|",
            f"| chatd, first start on the copy | {num(rs['first_start_ms'])} | – |",
            f"| chatd restart | {', '.join(num(x) for x in rs['chatd_restart_ms'])} | {num(med)} |",
            f"| bare-longpoll start (process floor) | {', '.join(num(x, 1) for x in rs['bare_start_ms'])} | {num(bare, 1)} |",
        ]
        floor = sc and sc["startup"]["bare_best"]["total_ms"]
        store = sc and sc["startup"]["best"]["total_ms"]
        if sc:
            lines.append(f"| chat-store start-up alone (scale bench, best of 3) | – | {num(store)} |")
            lines.append(f"| its I/O floor: snapshot blob and tail rows read raw | – | {num(floor)} |")
        summary.append(("Restart with 1M messages", "serving in <= 2 s", num(med, 0, " ms"), num(floor, 0, " ms (I/O floor)") if floor else "–", ratio(med, floor) if floor else "–", verdict(med <= 2000)))
    section("restart", "Restart", lines or ["Not measured."])

    cluster(summary, section)
    federation(summary, section)
    irc(summary, section)

    head = [
        "# Benchmarks",
        "",
        "chatd against SPEC §10, each row beside its baseline measured in the same run by the same load generator",
        "(`chat-loadgen`). Generated by `benches/run.sh` (which ends by running `benches/report.py`); the prose",
        "under each row is `benches/analysis.md`. Do not edit this file by hand.",
        "",
        "## Machine",
        "",
        f"- {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('memory', '?')} memory, Linux {machine.get('kernel', '?')}",
        f"- {machine.get('rustc', '?')}; {machine.get('nats_server', 'nats-server not found')}",
        f"- open-file hard limit per process: {machine.get('nofile_hard_limit', '?')}",
        f"- run {machine.get('date', '?')}; server and load generator share the two cores, on loopback",
        "",
        "## How to run",
        "",
        "```sh",
        "benches/run.sh                 # every row, about 45 minutes; on a quiet machine",
        "benches/run.sh fanout rooms    # some rows; the report is rebuilt from all results present",
        "QUICK=1 benches/run.sh         # small sizes, to try the script",
        "benches/run.sh pg-durable cluster-fanout cluster-rooms cluster-failover   # PostgreSQL and cluster rows",
        "benches/run.sh federation     # two linked servers",
        "benches/run.sh irc-idle irc-fanout  # the IRC door",
        "```",
        "",
        "It needs python3 and, for the fan-out peer, nats-server (`apt-get install -y nats-server`); the",
        "PostgreSQL and cluster rows need Debian's PostgreSQL 15 (`apt-get install -y postgresql`), of which",
        "they start a server of their own (`benches/pg.py`: a temp dir, a free port, fsync and",
        "synchronous_commit on).",
        "",
        "Servers: chatd (`target/release/chatd serve`, SQLite, a fresh database per run, `RATE_LIMIT=off`),",
        "`bare-ws` (a bare tokio-tungstenite broadcast server with chatd's socket settings, `crates/chat-bench`),",
        "`bare-longpoll` (a bare hyper long-poll server, `crates/chat-bench`), Debian's `nats-server` with its",
        "WebSocket listener (`benches/nats-ws.conf`). Results are in `benches/results/*.json`.",
        "",
        "## Summary",
        "",
        "| row | target | chatd | baseline | ratio | |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary:
        head.append("| " + " | ".join(r) + " |")
    head.append("")
    if notes.get("summary"):
        head += [notes["summary"], ""]
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(head + body).rstrip() + "\n")


if __name__ == "__main__":
    main()
