"""Ctrl-C during a parallel call, on threads and processes: the work stops, the call re-raises
KeyboardInterrupt within 1 s, and the program exits without running the rest; on processes
the workers running it are killed, and none is left behind (docs/parallel.md#interrupted-calls).

Each case runs in a child interpreter that gets a real SIGINT, as a terminal's Ctrl-C would
send it to the main process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from _concurrency import gone

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT"),
]

PROGRAM = textwrap.dedent(
    """
    import os, sys, time
    import dualmode as dm

    def slow(n):
        time.sleep(3)
        return n

    class Slow(dm.Database):
        @dm.query
        def value(self, n):
            time.sleep(3)
            return n

    if __name__ == "__main__":
        backend, call = sys.argv[1], sys.argv[2]
        with dm.use(backend, workers=2):
            workers = set(dm.par_map(lambda _: os.getpid(), range(8), chunksize=1))
            print(*sorted(workers), flush=True)  # the pool is started: interrupt at will
            started = time.monotonic()
            try:
                if call == "par_map":
                    dm.par_map(slow, range(8), chunksize=1)
                elif call == "scope":
                    with dm.scope() as s:
                        for n in range(4):
                            s.spawn(slow, n)
                elif call == "join":
                    dm.join(lambda: slow(0), lambda: slow(1))
                elif call == "prefetch":
                    Slow().value.prefetch(range(8))
            except KeyboardInterrupt:
                print(f"interrupted after {time.monotonic() - started:.2f}", flush=True)
                raise
    """
)

CALLS = ["par_map", "scope", "join", "prefetch"]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_ctrl_c_stops_a_parallel_call_at_once(backend: str, call: str, tmp_path: object) -> None:
    script = os.path.join(str(tmp_path), "interrupted.py")
    with open(script, "w") as f:
        f.write(PROGRAM)
    child = subprocess.Popen(
        [sys.executable, script, backend, call],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        workers = [int(pid) for pid in child.stdout.readline().split()]
        time.sleep(0.5)  # the slow work is running now
        child.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = child.communicate(timeout=60)
        exited = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
    reraised = float(out.split("interrupted after ")[1].split()[0]) - 0.5
    assert reraised < 1.0, out
    # What was running finishes on threads (a thread cannot be stopped: 2.5 s more here);
    # nothing else starts: all of it (8 or 4 x 3 s on 2 workers) would take 6 to 12 s more.
    assert exited < (5 if backend == "threads" else 2), exited
    if backend == "processes":
        deadline = time.monotonic() + 5
        while any(not gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if not gone(pid)], "worker processes left behind"
