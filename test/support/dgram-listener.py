#!/usr/bin/env python3
"""Receives sd_notify datagrams the way systemd does, for tests.

Usage: dgram-listener.py ADDRESS
ADDRESS is a filesystem path, or @name for an abstract socket (as NOTIFY_SOCKET spells it).

Binds an AF_UNIX SOCK_DGRAM socket with SO_PASSCRED, so the kernel attaches the sender's
credentials (SCM_CREDENTIALS) to every datagram: the pid systemd's NotifyAccess=main checks.
Prints {"listening": ADDRESS} once bound, then one JSON line per datagram:
  {"pid": ..., "uid": ..., "gid": ..., "data": "...", "monotonic_usec": ...}
where monotonic_usec is CLOCK_MONOTONIC at receipt. Exits when stdin closes or on SIGTERM.
"""
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    address = sys.argv[1]
    bind_to = "\0" + address[1:] if address.startswith("@") else address

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(bind_to)

    def emit(record: dict) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    emit({"listening": address})

    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "sock")
    try:
        sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    except (PermissionError, ValueError):
        pass  # stdin is a file such as /dev/null, which cannot be polled: run until SIGTERM
    while True:
        for key, _ in sel.select():
            if key.data == "stdin":
                if os.read(sys.stdin.fileno(), 4096) == b"":
                    return 0
                continue
            data, ancdata, _flags, _addr = sock.recvmsg(65536, socket.CMSG_SPACE(UCRED.size))
            received = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            pid = uid = gid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, gid = UCRED.unpack(payload[: UCRED.size])
            emit(
                {
                    "pid": pid,
                    "uid": uid,
                    "gid": gid,
                    "data": data.decode("utf-8", errors="replace"),
                    "monotonic_usec": received,
                }
            )


if __name__ == "__main__":
    sys.exit(main())
