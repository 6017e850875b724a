#!/usr/bin/env python3
"""The durable row's baselines on the disk under DIR: fdatasync latency of a 4 KiB write, and SQLite (WAL,
synchronous=FULL) single-row commits/s and rows/s in 1000-row transactions. Prints JSON."""

import json
import os
import sqlite3
import sys
import time

directory = sys.argv[1] if len(sys.argv) > 1 else "."


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * p))]


path = os.path.join(directory, "fdatasync.bin")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
block = b"x" * 4096
times = []
for _ in range(1000):
    os.write(fd, block)
    start = time.perf_counter()
    os.fdatasync(fd)
    times.append((time.perf_counter() - start) * 1000)
os.close(fd)
os.unlink(path)

db_path = os.path.join(directory, "disk-baseline.db")
for suffix in ("", "-wal", "-shm"):
    try:
        os.unlink(db_path + suffix)
    except FileNotFoundError:
        pass
db = sqlite3.connect(db_path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
body = "y" * 100
commits, start = 0, time.perf_counter()
while time.perf_counter() - start < 3:
    db.execute("BEGIN")
    db.execute("INSERT INTO t (body) VALUES (?)", (body,))
    db.execute("COMMIT")
    commits += 1
single = commits / (time.perf_counter() - start)
rows, start = 0, time.perf_counter()
while time.perf_counter() - start < 3:
    db.execute("BEGIN")
    db.executemany("INSERT INTO t (body) VALUES (?)", ((body,) for _ in range(1000)))
    db.execute("COMMIT")
    rows += 1000
batched = rows / (time.perf_counter() - start)
db.close()
for suffix in ("", "-wal", "-shm"):
    try:
        os.unlink(db_path + suffix)
    except FileNotFoundError:
        pass

print(
    json.dumps(
        {
            "fdatasync_ms": {
                "p50": percentile(times, 0.5),
                "p99": percentile(times, 0.99),
                "max": max(times),
                "rounds": len(times),
            },
            "sqlite_wal_full": {
                "single_row_commits_per_s": single,
                "rows_per_s_in_1000_row_transactions": batched,
            },
        },
        indent=2,
    )
)
