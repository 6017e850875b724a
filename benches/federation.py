#!/usr/bin/env python3
"""Federation benchmarks (SPEC §13): two chatd servers on 127.0.0.1, each with its own SQLite database,
linked both ways; the load comes from chat-loadgen.

  python3 benches/federation.py --chatd target/release/chatd --loadgen target/release/chat-loadgen \\
      --work /tmp/dir --out benches/results [--quick]

Writes to --out:
- federation-throughput-K.json: `fanout` with the sender on server A and the receivers (gateway
  connections) on server B, unpaced: every message crosses the link before it is delivered; REPEAT runs (the
  figure swings by a quarter from run to run with three processes on two cores; the report takes the
  median);
- federation-latency-{local,linked}-K.json: the same at 20% of that rate, with the sender on B itself
  (local) and on A (linked), taking turns REPEAT times; the link's cost is the difference of the p99s;
- federation-drain.json: B stopped (SIGSTOP) for DOWN seconds while a durable-send load runs on A, then
  continued: A's outbox for B as it drains (from A's /api/v1/federation/status every 100 ms), the time
  until it is caught up, and the ops per second B took meanwhile.

Every server this script starts is stopped when it ends.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

KEY = "the bench key"


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def wait_http(base, limit=60):
    end = time.time() + limit
    while time.time() < end:
        try:
            get(base + "/.well-known/healthcheck.json")
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"{base} does not answer")


class Pair:
    """Servers a.bench (sender side) and b.bench (receiver side), linked both ways."""

    def __init__(self, chatd, work, ports):
        self.chatd, self.work, self.ports = chatd, work, ports
        self.procs = {}
        self.dirs = {}

    def base(self, name):
        return f"http://127.0.0.1:{self.ports[name]}"

    def env(self, name):
        d = self.dirs[name]
        return dict(
            os.environ,
            FEDERATION_NAME=f"{name}.bench",
            FEDERATION_KEY=KEY,
            FEDERATION_HANDSHAKE_EVERY="1s",
            RATE_LIMIT="off",
            MAX_CONNECTIONS_PER_IP="1000000",
            LISTEN=f"127.0.0.1:{self.ports[name]}",
            DBURL=f"sqlite://{d}/chat.db",
            DATA_DIR=f"{d}/data",
            RUST_LOG="warn",
        )

    def start(self):
        for name in ("a", "b"):
            self.dirs[name] = tempfile.mkdtemp(prefix=f"fed-{name}.", dir=self.work)
            log = open(os.path.join(self.dirs[name], "log"), "w")
            self.procs[name] = subprocess.Popen([self.chatd, "serve"], env=self.env(name), stdout=log, stderr=log)
        for name in ("a", "b"):
            wait_http(self.base(name))
        for name, other in (("a", "b"), ("b", "a")):
            subprocess.run(
                [self.chatd, "link", "add", f"{other}.bench", self.base(other)],
                env=self.env(name), check=True, stdout=subprocess.DEVNULL,
            )
        end = time.time() + 30
        while time.time() < end:
            if all(self.peer(n)["state"] == "up" for n in ("a", "b")):
                return
            time.sleep(0.1)
        sys.exit("the link does not come up")

    def peer(self, name):
        return get(self.base(name) + "/api/v1/federation/status")["peers"][0]

    def pid(self, name):
        return self.procs[name].pid

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def loadgen(args, pair, out, scenario, *extra, sender="a", receivers="b"):
    cmd = [args.loadgen, scenario, "--url", pair.base(receivers), "--json", out, "--server-pid", str(pair.pid(receivers))]
    if sender != receivers:
        cmd += ["--send-url", pair.base(sender)]
    cmd += list(extra)
    print("==", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    with open(out) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chatd", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--port-base", type=int, default=18110)
    ap.add_argument("--rows", default="throughput,latency,drain", help="which parts, comma-separated")
    args = ap.parse_args()
    quick = args.quick
    messages = 20000 if quick else 100000
    phase = 5 if quick else 20
    repeat = 1 if quick else 3
    down = 10 if quick else 60
    receivers = "2"
    ports = {"a": args.port_base + 1, "b": args.port_base + 2}
    out = lambda name: os.path.join(args.out, f"federation-{name}.json")  # noqa: E731

    rows = args.rows.split(",")
    # 1. Throughput: unpaced, every message relayed from a to b and delivered there, REPEAT runs on fresh servers.
    if "throughput" in rows:
        for name in os.listdir(args.out):
            if name.startswith("federation-throughput"):
                os.remove(os.path.join(args.out, name))
        for k in range(1, repeat + 1):
            pair = Pair(args.chatd, args.work, ports)
            pair.start()
            try:
                loadgen(args, pair, out(f"throughput-{k}"), "fanout", "--conns", receivers, "--rate", "0",
                        "--messages", str(messages), "--duration", "60", "--socket-buffer-kib", "0")
            finally:
                pair.stop()
    runs = []
    for k in range(1, repeat + 1):
        try:
            with open(out(f"throughput-{k}")) as f:
                t = json.load(f)
            runs.append(t["deliveries_per_s"] / t["parameters"]["conns"])
        except FileNotFoundError:
            pass
    if not runs:
        sys.exit("no throughput run to take 20% of")
    runs.sort()
    per_s = runs[len(runs) // 2]
    rate = max(1, round(per_s * 0.2))

    # 2. Latency at 20% of that rate: the sender on b itself, then on a, in turn.
    if "latency" in rows:
        for name in os.listdir(args.out):
            if name.startswith("federation-latency-"):
                os.remove(os.path.join(args.out, name))
        pair = Pair(args.chatd, args.work, ports)
        pair.start()
        try:
            for k in range(1, repeat + 1):
                for where, sender in (("local", "b"), ("linked", "a")):
                    loadgen(args, pair, out(f"latency-{where}-{k}"), "fanout", "--conns", receivers, "--rate",
                            str(rate), "--messages", str(rate * phase), "--duration", str(phase + 5),
                            "--socket-buffer-kib", "0", sender=sender)
        finally:
            pair.stop()

    # 3. b down for `down` seconds under load on a, then back: a's outbox drains.
    if "drain" not in rows:
        return
    pair = Pair(args.chatd, args.work, ports)
    pair.start()
    load_rate = rate
    try:
        before = pair.peer("b")["ops_in"]
        load = subprocess.Popen(
            [args.loadgen, "durable-send", "--url", pair.base("a"), "--conns", "16", "--rate", str(load_rate),
             "--duration", str(down + 20), "--json", out("drain-load")],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(3)
        os.kill(pair.pid("b"), signal.SIGSTOP)
        stopped = time.time()
        time.sleep(down)
        at_return = pair.peer("a")
        os.kill(pair.pid("b"), signal.SIGCONT)
        back = time.time()
        samples = []
        caught_up = None
        end = at_return
        while time.time() - back < 300:
            p = pair.peer("a")
            at = time.time() - back
            samples.append((round(at, 2), p["lag_events"]))
            # Caught up: the outbox holds less than a tenth of a second of the load (2 events a message).
            if p["lag_events"] <= max(50, load_rate * 2 // 10):
                caught_up, end = at, p
                break
            time.sleep(0.1)
        taken = pair.peer("b")["ops_in"] - before
        load.wait(timeout=down + 120)
        drain = {
            "down_s": round(back - stopped, 2),
            "load_msgs_per_s": load_rate,
            "lag_events_at_return": at_return["lag_events"],
            "caught_up_s": caught_up,
            # The outbox's cursor moved this many local events per second while it drained (half of them
            # messages, half the ops' markers), the load going on meanwhile.
            "events_per_s_draining": round((end["cursor"] - at_return["cursor"]) / caught_up) if caught_up else None,
            "ops_per_s_draining": round((end["ops_out"] - at_return["ops_out"]) / caught_up) if caught_up else None,
            "ops_taken_by_b": taken,
            "samples": samples,
        }
    finally:
        pair.stop()
    with open(out("drain"), "w") as f:
        json.dump(drain, f, indent=1)
    print(json.dumps({k: v for k, v in drain.items() if k != "samples"}), file=sys.stderr)


if __name__ == "__main__":
    main()
