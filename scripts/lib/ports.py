"""A free loopback port for a process a script starts: `python3 scripts/lib/ports.py` prints one.

Ports come from 16000..20000, below the kernel's ephemeral range and apart from the ranges of
pie-cluster (10000..16000) and the Rust test harness (20000..32768): a port the kernel picks for
bind(0) or for an outgoing connection may be picked again, for another process, before the
process meant to have it binds it.
"""

import random
import socket

LOW, HIGH = 16000, 20000


def free_port():
    """A port of LOW..HIGH that is free on 127.0.0.1 now, tried in random order."""
    start = random.randrange(LOW, HIGH)
    for i in range(HIGH - LOW):
        port = LOW + (start - LOW + i) % (HIGH - LOW)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free port on 127.0.0.1 in {LOW}..{HIGH}")


if __name__ == "__main__":
    print(free_port())
