#!/usr/bin/env python3
"""The cluster's writer killed under load: how long until writes are acknowledged again.

Starts NODES chatd nodes on a fresh database of a PostgreSQL server (benches/pg.py: the one in --pg-dir if it
runs, else one of its own in --work), makes SENDERS guests in one channel, and has each send PRIVMSG after
PRIVMSG through its own node, one request in flight, every message with a nonce of its own. A request that
fails (connection refused or broken, 503 while the writer changes, a timeout) is sent again with the same
nonce to the next node, so that no message is applied twice. Meanwhile the writer (the node that says so in
GET /api/v1/server) is killed with SIGKILL KILLS times; after each kill, once writes flow again, the killed
node is started again (same NODE_ID and port, now a follower) and the cluster settles before the next kill.

For each kill it records, from the instant of the kill (all in ms):
- first_ack: the first acknowledgement of a message whose first send began after the kill (any sender);
- all_senders: the time by which every sender has had such an acknowledgement (each node can write again;
  the senders of the killed node included, through the node they moved to): the row's figure;
- takeover: the time until a surviving node reports itself the writer.
At the end every acknowledged message is looked up in the channel's history: each must be there exactly once.
Prints (and with --json writes) JSON. Loopback only; every process started here is stopped."""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pg  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--chatd", required=True)
parser.add_argument("--work", default=None, help="a directory for the nodes' files (default: a temp dir)")
parser.add_argument("--pg-dir", default=None, help="a running benches/pg.py server's directory")
parser.add_argument("--nodes", type=int, default=3)
parser.add_argument("--senders", type=int, default=6)
parser.add_argument("--kills", type=int, default=10)
parser.add_argument("--port-base", type=int, default=18100)
parser.add_argument("--lease-ttl", default=None, help="LEASE_TTL of the nodes (default: chatd's)")
parser.add_argument("--settle", type=float, default=3.0, help="seconds of steady writes before each kill")
parser.add_argument("--limit", type=float, default=60.0, help="longest wait for writes after a kill, s")
parser.add_argument("--json", default=None)
args = parser.parse_args()

CHANNEL = "#failover"
REQUEST_TIMEOUT = 30.0


def now_ms():
    return time.monotonic() * 1000


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * p))] if values else None


class Node:
    def __init__(self, index, dburl, data, logs):
        self.index, self.dburl, self.data, self.logs = index, dburl, data, logs
        self.port = args.port_base + index
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.starts = 0

    def start(self):
        env = dict(
            os.environ,
            LISTEN=f"127.0.0.1:{self.port}",
            NODE_ID=str(self.index),
            DBURL=self.dburl,
            DATA_DIR=self.data,
            MAX_CONNECTIONS_PER_IP="1000000",
            RATE_LIMIT="off",
            RUST_LOG="warn",
            # Every message stays in the channel for the check at the end.
            MAX_HISTORY="10000000",
        )
        if args.lease_ttl:
            env["LEASE_TTL"] = args.lease_ttl
        self.starts += 1
        log = open(os.path.join(self.logs, f"node-{self.index}.{self.starts}.log"), "w")
        self.proc = subprocess.Popen([args.chatd, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        pg.wait_http(self.url + "/.well-known/healthcheck.json")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def view(self):
        """This node's GET /api/v1/server `nodes`, or None."""
        try:
            with urllib.request.urlopen(self.url + "/api/v1/server", timeout=2) as r:
                return json.load(r)["nodes"]
        except (OSError, ValueError, KeyError):
            return None

    def is_writer(self):
        v = self.view()
        return bool(v) and any(x["self"] and x["role"] == "writer" for x in v)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def post(conn, path, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", path, json.dumps(body), headers)
    r = conn.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else None)


class Sender(threading.Thread):
    """Sends through its home node, one request in flight; moves to the next node when a request fails."""

    def __init__(self, i, token, nodes, stop):
        super().__init__(daemon=True)
        self.i, self.token, self.nodes, self.stop_event = i, token, nodes, stop
        self.at = i % len(nodes)
        self.conns = {}
        self.lock = threading.Lock()
        self.acks = []  # (first attempt started ms, acknowledged ms, body)
        self.retries = 0

    def conn(self):
        node = self.nodes[self.at]
        c = self.conns.get(node.port)
        if c is None:
            c = http.client.HTTPConnection("127.0.0.1", node.port, timeout=REQUEST_TIMEOUT)
            self.conns[node.port] = c
        return c

    def drop(self):
        c = self.conns.pop(self.nodes[self.at].port, None)
        if c is not None:
            c.close()

    def run(self):
        k = 0
        while not self.stop_event.is_set():
            k += 1
            body = f"s{self.i}-{k}"
            nonce = f"failover-{self.i}-{k}"
            started = now_ms()
            while not self.stop_event.is_set():
                try:
                    status, _ = post(
                        self.conn(),
                        "/api/v1/messages",
                        {"command": "PRIVMSG", "to": CHANNEL, "body": body, "nonce": nonce},
                        self.token,
                    )
                    if 200 <= status < 300:
                        with self.lock:
                            self.acks.append((started, now_ms(), body))
                        break
                    if status != 503:
                        print(f"sender {self.i}: HTTP {status}", file=sys.stderr)
                except (OSError, http.client.HTTPException):
                    self.drop()
                # The same message, with the same nonce, through the next node.
                self.retries += 1
                self.at = (self.at + 1) % len(self.nodes)
                time.sleep(0.02)

    def first_ack_after(self, t):
        """When this sender's first message begun at or after t was acknowledged, or None."""
        with self.lock:
            for started, acked, _ in self.acks:
                if started >= t:
                    return acked
        return None


def main():
    work = tempfile.mkdtemp(prefix="failover.", dir=args.work)
    own_pg = None
    pg_dir = args.pg_dir
    if not pg_dir or not os.path.exists(os.path.join(pg_dir, "port")):
        pg_dir = own_pg = os.path.join(work, "pg")
        pg.start(pg_dir)
    nodes = []
    stop = threading.Event()
    try:
        dburl = pg.fresh(pg_dir, "failover")
        data = os.path.join(work, "data")
        nodes = [Node(i, dburl, data, work) for i in range(1, args.nodes + 1)]
        for n in nodes:
            n.start()
            if n.index == 1:
                deadline = time.monotonic() + 60
                while not n.is_writer():
                    if time.monotonic() > deadline:
                        raise SystemExit("node 1 did not become the writer")
                    time.sleep(0.1)
        # Guests made through the writer, each in the channel.
        tokens = []
        c = http.client.HTTPConnection("127.0.0.1", nodes[0].port, timeout=REQUEST_TIMEOUT)
        for i in range(args.senders):
            status, v = post(c, "/api/v1/session", {"nick": f"fo{i}"})
            if status != 200:
                raise SystemExit(f"session: HTTP {status} {v}")
            tokens.append(v["token"])
            status, v = post(c, "/api/v1/messages", {"command": "JOIN", "to": CHANNEL}, v["token"])
            if status != 200:
                raise SystemExit(f"join: HTTP {status} {v}")
        c.close()
        time.sleep(1)
        senders = [Sender(i, t, nodes, stop) for i, t in enumerate(tokens)]
        for s in senders:
            s.start()
        kills = []
        for k in range(args.kills):
            time.sleep(args.settle)
            writer = next((n for n in nodes if n.alive() and n.is_writer()), None)
            if writer is None:
                raise SystemExit("no node reports itself the writer")
            t = now_ms()
            writer.kill()
            takeover = None
            all_done = None
            while now_ms() - t < args.limit * 1000:
                if takeover is None and any(n.alive() and n.is_writer() for n in nodes):
                    takeover = now_ms() - t
                firsts = [s.first_ack_after(t) for s in senders]
                if all(f is not None for f in firsts):
                    all_done = firsts
                    break
                time.sleep(0.01)
            if all_done is None:
                kills.append({"killed_node": writer.index, "timed_out_after_ms": args.limit * 1000})
                print(f"kill {k + 1}: writes did not resume within {args.limit} s", file=sys.stderr)
            else:
                rec = {
                    "killed_node": writer.index,
                    "first_ack_ms": min(all_done) - t,
                    "all_senders_ms": max(all_done) - t,
                    "takeover_ms": takeover,
                }
                kills.append(rec)
                print(
                    f"kill {k + 1}: node {writer.index}; first ack {rec['first_ack_ms']:.0f} ms, every sender "
                    f"{rec['all_senders_ms']:.0f} ms, takeover {takeover if takeover is None else round(takeover)} ms",
                    file=sys.stderr,
                )
            writer.start()
        time.sleep(1)
        stop.set()
        for s in senders:
            s.join(timeout=REQUEST_TIMEOUT + 5)
        acked = [b for s in senders for _, _, b in s.acks]
        found = history(nodes, tokens[0])
        missing = [b for b in acked if found.get(b, 0) == 0]
        doubled = [b for b, n in found.items() if n > 1]
        resumed = [r["all_senders_ms"] for r in kills if "all_senders_ms" in r]
        result = {
            "nodes": args.nodes,
            "senders": args.senders,
            "lease_ttl": args.lease_ttl or "chatd's default",
            "kills": kills,
            "all_senders_ms": {
                "p50": percentile(resumed, 0.5),
                "p99": percentile(resumed, 0.99),
                "max": max(resumed) if resumed else None,
            },
            "first_ack_ms": {"p99": percentile([r["first_ack_ms"] for r in kills if "first_ack_ms" in r], 0.99)},
            "timed_out": sum(1 for r in kills if "timed_out_after_ms" in r),
            "acknowledged": len(acked),
            "resent": sum(s.retries for s in senders),
            "history": {"found": sum(found.values()), "missing": len(missing), "doubled": len(doubled)},
        }
        out = json.dumps(result, indent=2)
        print(out)
        if args.json:
            with open(args.json, "w") as f:
                f.write(out + "\n")
    finally:
        stop.set()
        for n in nodes:
            n.stop()
        if own_pg:
            pg.stop(own_pg)
        subprocess.run(["rm", "-rf", work])


def history(nodes, token):
    """Counts of each message body in the channel's history, read through a live node, newest page first."""
    node = next(n for n in nodes if n.alive())
    counts = {}
    before = None
    c = http.client.HTTPConnection("127.0.0.1", node.port, timeout=REQUEST_TIMEOUT)
    while True:
        path = f"/api/v1/history?target={urllib.request.quote(CHANNEL, safe='')}&limit=100"
        if before:
            path += f"&before={before}"
        c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()
        v = json.loads(r.read())
        if r.status != 200:
            raise SystemExit(f"history: HTTP {r.status} {v}")
        page = v["messages"]
        for m in page:
            if m.get("type") == "message" and m.get("body"):
                counts[m["body"]] = counts.get(m["body"], 0) + 1
        if not page:
            return counts
        before = min(int(m["id"]) for m in page)


if __name__ == "__main__":
    main()
