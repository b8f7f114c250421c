#!/usr/bin/env python3
"""Startup time: from exec to the first 200 on GET /health, polled every 0.5 ms.

usage: startup.py RUNS PORT LOG [CGROUP_PROCS] -- COMMAND...

Starts COMMAND (its environment is this script's) RUNS times, one after the
other, stopping each after its first 200, and prints the times in
milliseconds, one per line, sorted. With CGROUP_PROCS (a cgroup's
cgroup.procs file), each process joins that cgroup before it execs, so it
starts inside the cgroup's CPU quota. A curl loop in bash costs a process per
poll and cannot tell 7 ms from 20 ms.
"""

import http.client
import os
import subprocess
import sys
import time


def first_200(port: int, process: subprocess.Popen, started: float) -> float:
    while True:
        if process.poll() is not None:
            sys.exit(f"the service exited with {process.returncode} before answering")
        if time.monotonic() - started > 30:
            sys.exit("no 200 on /health within 30 s")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return (time.monotonic() - started) * 1000
        except OSError:
            time.sleep(0.0005)
        finally:
            connection.close()


def main() -> None:
    separator = sys.argv.index("--")
    runs, port, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    procs = sys.argv[4] if separator > 4 else None
    command = sys.argv[separator + 1 :]

    def join_cgroup() -> None:
        if procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
    times = []
    with open(log, "ab") as out:
        for _ in range(runs):
            started = time.monotonic()
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=join_cgroup)
            try:
                times.append(first_200(port, process, started))
            finally:
                process.terminate()
                process.wait()
    print("\n".join(f"{t:.1f}" for t in sorted(times)))


if __name__ == "__main__":
    main()
