#!/usr/bin/env python3
"""Prints the machine the benchmarks ran on as JSON: CPU, cores, memory, kernel, tool versions, date."""

import json
import os
import platform
import subprocess
import time


def first(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def version(*cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def nofile():
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    except (ImportError, ValueError, OSError):
        return None


print(
    json.dumps(
        {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu": first("/proc/cpuinfo", "model name"),
            "cores": os.cpu_count(),
            "memory": first("/proc/meminfo", "MemTotal"),
            "kernel": platform.release(),
            "rustc": version("rustc", "--version"),
            "nats_server": version("nats-server", "--version"),
            "nofile_hard_limit": nofile(),
        },
        indent=2,
    )
)
