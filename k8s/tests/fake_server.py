#!/usr/bin/env python3
"""Runs the fake az and kubectl for test_setup.py without starting Python
for each command.

setup.sh runs the fakes some 750 times per test run, and a fresh Python
spends most of each command starting up and importing json, jmespath and
yaml. This server imports all that once; the bin/az and bin/kubectl
wrappers that test_setup.py writes (bash) connect to it on 127.0.0.1 and
send a token, the fake's name, their pid and their arguments. The server
forks; the child takes the wrapper's environment (/proc/PID/environ), its
working directory (/proc/PID/cwd) and its stdin, stdout and stderr (copies
of which the wrapper keeps as fds 5, 6 and 7: /proc/PID/fd/5-7), and runs
the fake's code as __main__, as `python3 FAKE ARGS` would, then answers
the exit code, which the wrapper exits with. So each command still runs
the fake's code afresh, with its own arguments, environment, directory,
stdio and exit code; only the interpreter and the modules imported here
are reused, in the state the import left them.

When the child cannot take the wrapper's stdio (a regular file, whose
offset it could not share, or a socket), it answers "direct" before running
anything, and the wrapper runs the fake itself; so does a wrapper that
cannot reach the server.

Usage: fake_server.py FAKE... (paths of the fakes), with the token in
$FAKE_SERVER_TOKEN. It prints its port, and exits when its stdin closes.
"""

import os
import selectors
import socket
import stat
import sys

# What the fakes import, imported here once (see the fakes).
import fnmatch  # noqa: F401
import hashlib  # noqa: F401
import json  # noqa: F401
import re  # noqa: F401
import shlex  # noqa: F401
import subprocess  # noqa: F401
import uuid  # noqa: F401

import jmespath  # noqa: F401
import yaml  # noqa: F401


# Where the wrapper keeps copies of its stdin, stdout and stderr: its fds 0
# and 1 are redirected to the socket for a while by its printf and read.
STDIO = (5, 6, 7)


def serve(fakes, token):
    codes = {}
    for path in fakes:
        with open(path) as f:
            codes[os.path.basename(path)] = (path, compile(f.read(), path, "exec"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(listener.getsockname()[1], flush=True)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(0, selectors.EVENT_READ)
    children = set()
    while True:
        for key, _ in sel.select(timeout=1):
            if key.fileobj == 0:
                if not os.read(0, 4096):  # the tests are done (or gone)
                    for pid in children:
                        os.waitpid(pid, 0)
                    return
                continue
            conn, _ = listener.accept()
            pid = os.fork()
            if pid == 0:
                rc = 1
                try:
                    listener.close()
                    sel.close()
                    rc = child(conn, codes, token)
                finally:  # never back into the loop
                    os._exit(rc)
            conn.close()
            children.add(pid)
        # Reaped here (not ignored), so that their CPU time counts as this
        # process's, and the tests' time measures it.
        for pid in list(children):
            if os.waitpid(pid, os.WNOHANG)[0]:
                children.discard(pid)


def read_request(conn):
    """The token, the fake's name, the wrapper's pid, the number of
    arguments and the arguments, each NUL-terminated."""
    data = b""
    while True:
        fields = data.split(b"\0")
        if len(fields) > 4 and len(fields) - 1 >= 4 + int(fields[3]):
            return [f.decode("utf-8", "surrogateescape") for f in fields[:4 + int(fields[3])]]
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError("the wrapper hung up")
        data += chunk


def child(conn, codes, token):
    try:
        got, name, pid, _, *args = read_request(conn)
        if got != token or name not in codes or not pid.isdigit():
            return 1
        path, code = codes[name]
        fds = []
        for n in range(3):
            fd = os.open(f"/proc/{pid}/fd/{STDIO[n]}", os.O_RDONLY if n == 0 else os.O_WRONLY)
            fds.append(fd)
            if not (stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISCHR(os.fstat(fd).st_mode)):
                raise OSError(f"fd {n} is neither a pipe nor a device")
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = [kv.partition(b"=") for kv in f.read().split(b"\0") if kv]
        os.chdir(f"/proc/{pid}/cwd")
    except (OSError, ValueError, EOFError):
        conn.sendall(b"direct\n")
        return 0
    for n, fd in enumerate(fds):
        os.dup2(fd, n)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    os.environ.clear()
    for k, _, v in environ:
        os.environb[k] = v
    sys.argv = [path, *args]
    try:
        exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
        rc = 0
    except SystemExit as e:
        if e.code is None:
            rc = 0
        elif isinstance(e.code, int):
            rc = e.code
        else:
            print(e.code, file=sys.stderr)
            rc = 1
    except BaseException as e:  # reported as Python does, from the fake's own frames
        e = e.with_traceback(e.__traceback__.tb_next)
        sys.excepthook(type(e), e, e.__traceback__)
        rc = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    conn.sendall(f"{rc & 0xFF}\n".encode())
    return 0


if __name__ == "__main__":
    serve(sys.argv[1:], os.environ["FAKE_SERVER_TOKEN"])
