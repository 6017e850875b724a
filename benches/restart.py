#!/usr/bin/env python3
"""Restart with 1M messages: the time from starting chatd on a copy of the scale bench's database until its
health check answers 200, three times after a first start; and, as a baseline, the same for the bare
long-poll server (a process of our stack with no data). Prints JSON. Loopback only; every process started
here is stopped."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("--db", required=True)
parser.add_argument("--chatd", required=True)
parser.add_argument("--bare", required=True)
parser.add_argument("--addr", default="127.0.0.1:18084")
parser.add_argument("--work", required=True)
parser.add_argument("--rounds", type=int, default=3)
args = parser.parse_args()


def serving_after(cmd, env, url, limit=60.0):
    """Starts cmd; returns (seconds until url answered 200, process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while time.perf_counter() - start < limit:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - start, proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited with {proc.returncode}")
        time.sleep(0.002)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not answer within {limit} s")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


directory = os.path.join(args.work, "restart")
os.makedirs(directory, exist_ok=True)
db = os.path.join(directory, "chat.db")
shutil.copyfile(args.db, db)
env = dict(
    os.environ,
    LISTEN=args.addr,
    DBURL=f"sqlite://{db}",
    DATA_DIR=os.path.join(directory, "data"),
    RUST_LOG="warn",
)
health = f"http://{args.addr}/.well-known/healthcheck.json"
first, proc = serving_after([args.chatd, "serve"], env, health)
stop(proc)
chatd = []
for _ in range(args.rounds):
    took, proc = serving_after([args.chatd, "serve"], env, health)
    chatd.append(took * 1000)
    stop(proc)
bare = []
for _ in range(args.rounds):
    took, proc = serving_after([args.bare, args.addr], dict(os.environ), f"http://{args.addr}/stats")
    bare.append(took * 1000)
    stop(proc)
print(
    json.dumps(
        {
            "database": os.path.basename(args.db),
            "database_mib": os.path.getsize(args.db) / 1048576,
            "first_start_ms": first * 1000,
            "chatd_restart_ms": chatd,
            "bare_start_ms": bare,
        },
        indent=2,
    )
)
