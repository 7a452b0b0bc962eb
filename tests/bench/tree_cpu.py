"""``python -m tests.bench.tree_cpu <command...>``: the CPU of a command and of every
process it started, orphans included.

``/usr/bin/time`` counts the children a process waited for; a fleet whose parent was
SIGKILLed (tests/e2e/test_up.py's ``hookfleet up``) is reparented to init, which reaps
it, so its ~10-25 CPU-s were in no measure of the tests. Here this process is the
command's child subreaper (prctl(2) ``PR_SET_CHILD_SUBREAPER``): orphans are
reparented to it, it reaps them all before it reports. Prints one line to stderr,
``<wall> s <user>+<sys> = <cpu> cpu``, and exits with the command's status. Linux only.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)  # noqa: S606  # the command as given, no shell
        finally:
            os._exit(127)
    status = 0
    while True:  # the command, then every orphan that outlived it
        try:
            done, code = os.wait()
        except ChildProcessError:
            break
        if done == pid:
            status = os.waitstatus_to_exitcode(code)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"{time.monotonic() - started:.1f} s {used.ru_utime:.1f}+{used.ru_stime:.1f} = "
        f"{used.ru_utime + used.ru_stime:.1f} cpu",
        file=sys.stderr,
    )
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
