#!/usr/bin/env python3
"""A PostgreSQL server of the benchmarks' own, and the chatd nodes on it. Used by benches/run.sh (as a
command) and benches/failover.py (as a module). Standard library only.

    benches/pg.py start DIR            # initdb (once) and start in DIR on a free port; prints the port
    benches/pg.py stop DIR             # stop it (immediately)
    benches/pg.py fresh DIR NAME       # drop and create database NAME; prints its postgres:// URL
    benches/pg.py commit DIR SECONDS   # a bare single-row commit's latency with pgbench; prints JSON

The server is Debian's PostgreSQL 15 (/usr/lib/postgresql/15/bin), run as the `postgres` user when this runs
as root (it refuses to run as root), on 127.0.0.1 only, with trust authentication. It is durable like chatd's
SQLite (WAL, synchronous=FULL): fsync on and synchronous_commit on, PostgreSQL's defaults, written out so that
nothing in the environment changes them."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
USER = "postgres"
AS_POSTGRES = os.geteuid() == 0
CONF = """
# benches/pg.py
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{dir}'
fsync = on
synchronous_commit = on
full_page_writes = on
max_connections = 400
shared_buffers = 256MB
log_min_messages = warning
"""


def command(program, *args):
    """PostgreSQL's `program` (from BIN) with `args`, as the postgres user when root."""
    path = os.path.join(BIN, program)
    argv = [path if os.path.exists(path) else program, *args]
    return ["runuser", "-u", USER, "--", *argv] if AS_POSTGRES else argv


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_dir(directory):
    return os.path.join(directory, "data")


def port_of(directory):
    with open(os.path.join(directory, "port")) as f:
        return int(f.read())


def start(directory):
    """Makes (once) and starts a server in `directory`; returns its port."""
    os.makedirs(directory, exist_ok=True)
    if AS_POSTGRES:
        # The server's user must reach its directory: let it through the parents, own the directory.
        parent = os.path.dirname(os.path.abspath(directory))
        while parent not in ("/", ""):
            mode = os.stat(parent).st_mode
            if mode & 0o001 == 0:
                os.chmod(parent, mode | 0o711)
            parent = os.path.dirname(parent)
        shutil.chown(directory, USER, USER)
    port = free_port()
    if not os.path.exists(os.path.join(data_dir(directory), "PG_VERSION")):
        subprocess.run(
            command("initdb", "-D", data_dir(directory), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-locale"),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    conf = os.path.join(data_dir(directory), "postgresql.auto.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(port=port, dir=directory))
    if AS_POSTGRES:
        shutil.chown(conf, USER, USER)
    subprocess.run(
        command("pg_ctl", "-D", data_dir(directory), "-l", os.path.join(directory, "log"), "-w", "-t", "60", "start"),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open(os.path.join(directory, "port"), "w") as f:
        f.write(str(port))
    return port


def stop(directory):
    if os.path.exists(os.path.join(data_dir(directory), "postmaster.pid")):
        subprocess.run(
            command("pg_ctl", "-D", data_dir(directory), "-m", "immediate", "-w", "stop"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def psql(directory, sql, db="postgres"):
    env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")
    subprocess.run(
        command("psql", "-h", "127.0.0.1", "-p", str(port_of(directory)), "-U", USER, "-d", db, "-q", "-v",
                "ON_ERROR_STOP=1", "-c", sql),
        check=True,
        stdout=subprocess.DEVNULL,
        env=env,
    )


def fresh(directory, name):
    """Drops and creates database `name`; returns chatd's DBURL for it."""
    psql(directory, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    psql(directory, f'CREATE DATABASE "{name}"')
    return f"postgres://{USER}@127.0.0.1:{port_of(directory)}/{name}"


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round((len(values) - 1) * p))]


def commit_latency(directory, seconds):
    """One client's single-row INSERT commits over TCP for `seconds` (pgbench, a log line a transaction):
    commits/s and latency percentiles in ms. The floor under one durable message on PostgreSQL."""
    fresh(directory, "pgbench")
    psql(directory, "CREATE TABLE t (id bigserial PRIMARY KEY, body text NOT NULL)", db="pgbench")
    work = os.path.join(directory, "pgbench")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    if AS_POSTGRES:
        shutil.chown(work, USER, USER)
    script = os.path.join(work, "insert.sql")
    with open(script, "w") as f:
        f.write("INSERT INTO t (body) VALUES (repeat('y', 100));\n")
    run = subprocess.run(
        command("pgbench", "-h", "127.0.0.1", "-p", str(port_of(directory)), "-U", USER, "-n", "-c", "1", "-j", "1",
                "-T", str(seconds), "-f", script, "--log", f"--log-prefix={work}/log", "pgbench"),
        check=True,
        capture_output=True,
        text=True,
        cwd=work,
    )
    times = []
    for name in os.listdir(work):
        if name.startswith("log"):
            with open(os.path.join(work, name)) as f:
                for line in f:
                    # client_id transaction_no time(us) script_no time_epoch time_us
                    parts = line.split()
                    if len(parts) >= 3:
                        times.append(int(parts[2]) / 1000)
    shutil.rmtree(work, ignore_errors=True)
    psql(directory, 'DROP DATABASE IF EXISTS "pgbench"')
    if not times:
        raise SystemExit(f"pgbench logged no transactions:\n{run.stdout}\n{run.stderr}")
    return {
        "what": "pgbench, 1 client over TCP, INSERT of one 100-byte row per transaction (autocommit)",
        "seconds": seconds,
        "commits": len(times),
        "commits_per_s": len(times) / seconds,
        "latency_ms": {
            "p50": percentile(times, 0.5),
            "p99": percentile(times, 0.99),
            "p99_9": percentile(times, 0.999),
            "max": max(times),
        },
        "settings": {"fsync": "on", "synchronous_commit": "on"},
    }


def wait_http(url, limit=60.0):
    """Waits until `url` answers 200 (at most `limit` seconds)."""
    import urllib.request

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {limit} s")


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    verb, directory = argv[1], argv[2]
    if verb == "start":
        print(start(directory))
    elif verb == "stop":
        stop(directory)
    elif verb == "fresh":
        print(fresh(directory, argv[3]))
    elif verb == "commit":
        print(json.dumps(commit_latency(directory, int(argv[3]) if len(argv) > 3 else 10), indent=2))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)

