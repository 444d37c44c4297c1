#!/usr/bin/env python3
"""qmp.py: a minimal QMP client for the vfnvme test rig (Python standard library only).

Usage:
  qmp.py SOCK COMMAND [JSON-ARGS] [--wait EVENT[:TIMEOUT_S]]
      Run one QMP command and print its reply. With --wait, then wait for EVENT on the SAME
      connection (QEMU does not replay events to a later connection), e.g.
        qmp.py RUNDIR/qmp.sock device_del '{"id":"nvme1"}' --wait DEVICE_DELETED:60
        qmp.py RUNDIR/qmp.sock device_add \\
            '{"driver":"nvme","id":"nvme1","serial":"RIGSERIAL0","subsys":"subsys0","bus":"rp1"}'
  qmp.py SOCK hmp 'HMP COMMAND'          e.g. qmp.py RUNDIR/qmp.sock hmp 'info pci'
  qmp.py SOCK wait-event EVENT [TIMEOUT_S]
  qmp.py SOCK events [SECONDS]           print every event for SECONDS

Exit code: 0 on success, 1 if QEMU answered with an error, 2 on a usage error or a timeout,
3 if the socket could not be reached. Events that arrive while waiting for something else are
printed to stderr as "event: {...}".
"""
import json
import socket
import sys
import time


class QMPError(Exception):
    pass


class QMP:
    """One QMP connection, in command mode after the capabilities handshake."""

    def __init__(self, path, timeout=30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise QMPError("unexpected greeting: %r" % greeting)
        reply = self.cmd("qmp_capabilities")
        if "return" not in reply:
            raise QMPError("qmp_capabilities failed: %r" % reply)

    def _read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QMP socket closed by QEMU")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, execute, arguments=None):
        """Send a command; return its reply. Events seen meanwhile are kept for wait_event."""
        msg = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            return reply

    def hmp(self, line):
        return self.cmd("human-monitor-command", {"command-line": line})

    def wait_event(self, name=None, timeout=30.0):
        """Return the first event called `name` (any event if None), or None on timeout."""
        for i, event in enumerate(self.events):
            if name is None or event["event"] == name:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self._read()
            except socket.timeout:
                break
            if "event" not in msg:
                continue
            if name is None or msg["event"] == name:
                return msg
            print("event: " + json.dumps(msg), file=sys.stderr)
        return None


def parse_wait(spec):
    name, _, timeout = spec.partition(":")
    return name, float(timeout or 60)


def main(argv):
    args = list(argv[1:])
    wait = None
    if "--wait" in args:
        i = args.index("--wait")
        if i + 1 >= len(args):
            print("qmp.py: --wait needs EVENT[:TIMEOUT_S]", file=sys.stderr)
            return 2
        wait = parse_wait(args[i + 1])
        del args[i:i + 2]
    if len(args) < 2 or args[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    sock_path, what, rest = args[0], args[1], args[2:]

    try:
        q = QMP(sock_path)
    except (OSError, QMPError, EOFError) as e:
        print("qmp.py: cannot talk to QEMU at %s: %s (is the guest running?)" % (sock_path, e),
              file=sys.stderr)
        return 3

    if what == "hmp":
        if not rest:
            print("qmp.py: hmp needs a command line", file=sys.stderr)
            return 2
        reply = q.hmp(" ".join(rest))
        if "return" in reply:
            sys.stdout.write(reply["return"])
            return 0
        print(json.dumps(reply))
        return 1
    if what == "wait-event":
        if not rest:
            print("qmp.py: wait-event needs an event name", file=sys.stderr)
            return 2
        timeout = float(rest[1]) if len(rest) > 1 else 30.0
        event = q.wait_event(rest[0], timeout)
        if event is None:
            print("qmp.py: timeout waiting for %s" % rest[0], file=sys.stderr)
            return 2
        print(json.dumps(event))
        return 0
    if what == "events":
        end = time.monotonic() + (float(rest[0]) if rest else 10.0)
        while time.monotonic() < end:
            event = q.wait_event(None, end - time.monotonic())
            if event:
                print(json.dumps(event), flush=True)
        return 0

    try:
        arguments = json.loads(rest[0]) if rest else None
    except json.JSONDecodeError as e:
        print("qmp.py: JSON-ARGS is not valid JSON: %s" % e, file=sys.stderr)
        return 2
    t0 = time.monotonic()
    reply = q.cmd(what, arguments)
    print(json.dumps(reply), flush=True)
    if "return" not in reply:
        return 1
    if wait:
        name, timeout = wait
        event = q.wait_event(name, timeout)
        if event is None:
            print("qmp.py: no %s within %.0fs" % (name, timeout), file=sys.stderr)
            return 2
        print("%s after %.3fs: %s" % (name, time.monotonic() - t0, json.dumps(event)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
