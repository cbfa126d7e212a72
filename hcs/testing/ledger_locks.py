"""Read the VRAM ledger's lease locks back from the kernel, for tests and checks of the interceptor.

libhcs_interceptor.so holds each live allocation as an OFD lock on its ledger file, at offsets from
``LEASE_BASE`` on (interceptor/src/region.h HCS_LEASE_BASE); the kernel's lock table (/proc/locks) is
where another process can see them.
"""

from __future__ import annotations

import os
from pathlib import Path

LEASE_BASE = 1 << 40  # interceptor/src/region.h HCS_LEASE_BASE: lease cells start here


def leased_bytes(ledger: Path) -> int:
    """Sum of the lease locks on a ledger file, read from the kernel's lock table (/proc/locks)."""
    st = ledger.stat()
    total = 0
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        # "1: OFDLCK ADVISORY READ -1 fd:01:1234 1099511627776 1099545182207" ("->" lines are waiters)
        if len(parts) < 8 or parts[1] == "->":
            continue
        dev_ino = parts[5].split(":")
        if len(dev_ino) != 3 or int(dev_ino[2]) != st.st_ino or \
                os.makedev(int(dev_ino[0], 16), int(dev_ino[1], 16)) != st.st_dev:
            continue
        start, end = int(parts[6]), parts[7]
        if start >= LEASE_BASE and end != "EOF":
            total += int(end) - start + 1
    return total
