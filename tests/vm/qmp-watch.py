#!/usr/bin/env python3
"""qmp-watch.py: the host half of the rig's guest -> QMP request channel (stdlib only).

Usage: qmp-watch.py RUNDIR [--parent PID]

run-guest.sh starts it in the background for the duration of each boot (and kills it when the
guest exits; it also exits by itself once PID, default its parent, is gone). The guest test cannot
reach QMP, so it asks through the shared run dir (/rig in the guest = RUNDIR on the host):

  guest writes  RUNDIR/qmp/req-NAME   one line: "device_del nvmeI [TIMEOUT_S]", "device_add nvmeI",
                                      "timerslack NS" (sets every QEMU thread's timer slack), or
                                      "pin on|off" (on: vCPU 0's thread alone on host CPU 0, every
                                      other QEMU thread on the other host CPUs; off: all CPUs), or
                                      "haltpoll NS|restore" (the host's cpuidle haltpoll window,
                                      /sys/module/haltpoll/parameters/guest_halt_poll_ns, when the
                                      host is itself a VM using haltpoll; restore = the value it
                                      had when this watcher started) -- the last three for
                                      same-boot benchmark comparisons
                                      (write it under another name and rename it into place)
  host writes   RUNDIR/qmp/done-NAME  first line "ok ..." or "error: ...", then details

NAME is any [A-Za-z0-9._-]+ the guest picks (unique per request). device_del waits on the same
QMP connection for DEVICE_DELETED of that id (default 60 s), so "ok" means the guest kernel
finished the removal, i.e. the process holding the device released it. device_add re-creates the
controller exactly as run-guest.sh did at boot (README, "Hot-unplug and re-add"): same id, serial,
subsystem and root port, so it comes back at the same PCI address, unbound.
RUNDIR/qmp/watcher.log records every request.
"""
import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import QMP, QMPError  # noqa: E402

REQ = re.compile(r"^req-([A-Za-z0-9._-]+)$")
DEV = re.compile(r"^nvme([0-9]+)$")


def log(rundir, msg):
    line = "%.3f %s\n" % (time.time(), msg)
    with open(os.path.join(rundir, "qmp", "watcher.log"), "a") as f:
        f.write(line)


def qemu_threads(rundir):
    """Thread ids of this boot's QEMU (from RUNDIR/qemu.pid)."""
    with open(os.path.join(rundir, "qemu.pid")) as f:
        pid = int(f.read().split()[0])
    return [int(t) for t in os.listdir("/proc/%d/task" % pid)]


def set_timerslack(rundir, value):
    """Writes VALUE (ns) to the timer slack of every thread of this boot's QEMU."""
    try:
        ns = int(value)
        if ns < 1:
            raise ValueError
    except ValueError:
        return False, "bad timer slack %r (want a positive number of ns)" % value
    try:
        tids = qemu_threads(rundir)
        for tid in tids:
            # /proc/TID/timerslack_ns (not under task/: that directory has no such file)
            with open("/proc/%d/timerslack_ns" % tid, "w") as f:
                f.write("%d\n" % ns)
    except (OSError, ValueError, IndexError) as e:
        return False, "cannot set QEMU's timer slack: %s" % e
    return True, "timer slack %d ns on %d QEMU threads" % (ns, len(tids))


HALTPOLL = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"
HALTPOLL_AT_START = None


def read_haltpoll():
    """The host's haltpoll window in ns, or None when the host has no haltpoll cpuidle driver."""
    try:
        with open(HALTPOLL) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def set_haltpoll(value):
    """Sets the host's haltpoll window: how long an idle host CPU polls before it halts (when the
    host is a VM, a halted CPU takes the outer hypervisor's wake-up latency to run again)."""
    if HALTPOLL_AT_START is None:
        return False, "this host has no haltpoll cpuidle driver (%s)" % HALTPOLL
    try:
        ns = HALTPOLL_AT_START if value == "restore" else int(value)
        if ns < 0:
            raise ValueError
    except ValueError:
        return False, "bad haltpoll window %r (want ns >= 0, or restore)" % value
    try:
        with open(HALTPOLL, "w") as f:
            f.write("%d\n" % ns)
    except OSError as e:
        return False, "cannot set %s: %s" % (HALTPOLL, e)
    return True, "haltpoll window %d ns (was %d at start)" % (ns, HALTPOLL_AT_START)


def pin(sock, how):
    """Pins vCPU 0's thread to host CPU 0 and every other QEMU thread to the rest ("on"), or
    lets every thread run anywhere again ("off")."""
    if how not in ("on", "off"):
        return False, "bad pin request %r (want on or off)" % how
    rundir = os.path.dirname(sock)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return False, "pinning needs two host CPUs (have %d)" % len(cpus)
    try:
        q = QMP(sock, timeout=30.0)
        try:
            reply = q.cmd("query-cpus-fast")
        finally:
            q.sock.close()
        vcpu0 = [c["thread-id"] for c in reply["return"] if c.get("cpu-index") == 0][0]
        tids = qemu_threads(rundir)
        for tid in tids:
            if how == "off":
                mask = set(cpus)
            else:
                mask = {cpus[0]} if tid == vcpu0 else set(cpus[1:])
            os.sched_setaffinity(tid, mask)
    except (OSError, ValueError, IndexError, KeyError, QMPError, EOFError) as e:
        return False, "cannot pin QEMU's threads: %s" % e
    return True, "pin %s: vCPU 0 thread %d, %d QEMU threads" % (how, vcpu0, len(tids))


def execute(sock, words):
    """Runs one request; returns (ok, text)."""
    if len(words) == 2 and words[0] == "timerslack":
        return set_timerslack(os.path.dirname(sock), words[1])
    if len(words) == 2 and words[0] == "pin":
        return pin(sock, words[1])
    if len(words) == 2 and words[0] == "haltpoll":
        return set_haltpoll(words[1])
    if len(words) < 2 or words[0] not in ("device_del", "device_add"):
        return False, "unknown request %r (want 'device_del nvmeI [TIMEOUT_S]', 'device_add nvmeI', 'timerslack NS', 'pin on|off' or 'haltpoll NS|restore')" % " ".join(words)
    op, dev = words[0], words[1]
    m = DEV.match(dev)
    if not m:
        return False, "bad device id %r (want nvmeI)" % dev
    idx = int(m.group(1))
    if not os.path.exists(sock):
        return False, "no QMP socket at %s" % sock
    try:
        q = QMP(sock, timeout=30.0)
    except (OSError, QMPError, EOFError) as e:
        return False, "cannot talk to QEMU at %s: %s" % (sock, e)
    t0 = time.monotonic()
    try:
        if op == "device_del":
            timeout = float(words[2]) if len(words) > 2 else 60.0
            reply = q.cmd("device_del", {"id": dev})
            if "return" not in reply:
                return False, "device_del refused: %s" % json.dumps(reply)
            while True:
                left = timeout - (time.monotonic() - t0)
                ev = q.wait_event("DEVICE_DELETED", max(0.0, left)) if left > 0 else None
                if ev is None:
                    return False, ("no DEVICE_DELETED for %s within %.0f s (is the device still "
                                   "held open in the guest?)" % (dev, timeout))
                if ev.get("data", {}).get("device") in (dev, None):
                    return True, "DEVICE_DELETED %s after %.3f s: %s" % (
                        dev, time.monotonic() - t0, json.dumps(ev))
        args = {"driver": "nvme", "id": dev, "serial": "RIGSERIAL0", "subsys": "subsys0",
                "bus": "rp%d" % idx}
        reply = q.cmd("device_add", args)
        if "return" not in reply:
            return False, "device_add %s refused: %s" % (json.dumps(args), json.dumps(reply))
        return True, "device_add %s done in %.3f s" % (json.dumps(args), time.monotonic() - t0)
    except (OSError, EOFError, ValueError) as e:
        return False, "%s %s: QMP failed: %s" % (op, dev, e)
    finally:
        try:
            q.sock.close()
        except OSError:
            pass


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    rundir = argv[1]
    parent = os.getppid()
    if len(argv) >= 4 and argv[2] == "--parent":
        parent = int(argv[3])
    qdir = os.path.join(rundir, "qmp")
    os.makedirs(qdir, exist_ok=True)
    sock = os.path.join(rundir, "qmp.sock")
    global HALTPOLL_AT_START
    HALTPOLL_AT_START = read_haltpoll()
    # run-guest.sh ends the watcher with SIGTERM: leave through the finally below, which puts a
    # changed host setting back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(rundir, "watcher started (pid %d, parent %d)" % (os.getpid(), parent))
    try:
        return watch(rundir, parent, qdir, sock)
    finally:
        if HALTPOLL_AT_START is not None and read_haltpoll() != HALTPOLL_AT_START:
            ok, text = set_haltpoll("restore")
            log(rundir, "haltpoll at exit: %s %s" % ("ok" if ok else "error", text))


def watch(rundir, parent, qdir, sock):
    """Answers requests until PARENT is gone."""
    seen = set()
    while alive(parent):
        try:
            names = sorted(os.listdir(qdir))
        except FileNotFoundError:
            names = []
        for name in names:
            m = REQ.match(name)
            if not m or name in seen:
                continue
            seen.add(name)
            key = m.group(1)
            done = os.path.join(qdir, "done-" + key)
            if os.path.exists(done):
                continue
            try:
                with open(os.path.join(qdir, name)) as f:
                    words = f.read().split()
            except OSError as e:
                ok, text = False, "cannot read the request: %s" % e
            else:
                log(rundir, "request %s: %s" % (key, " ".join(words)))
                ok, text = execute(sock, words)
            log(rundir, "result %s: %s %s" % (key, "ok" if ok else "error", text))
            tmp = os.path.join(qdir, ".done-" + key)
            with open(tmp, "w") as f:
                f.write(("ok " if ok else "error: ") + text + "\n")
            os.rename(tmp, done)
        time.sleep(0.05)
    log(rundir, "parent %d gone; watcher exits" % parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
