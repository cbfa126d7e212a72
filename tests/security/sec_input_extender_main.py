"""Run the scheduler extender (HTTPS, client certificates) as its own process for tests/security.

    python sec_input_extender_main.py PORT CERT KEY CLIENT_CA
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from hcs.allocator.extender import Extender, ExtenderTLS, serve_http
from hcs.allocator.state import AllocatorState
from hcs.cluster_inventory import DeviceInfo, NodeInventory

GI = 2**30


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    port, cert, key, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    state = AllocatorState()
    state.set_node(NodeInventory("big", tuple(
        DeviceInfo(f"nvidia-{i}", "nvidia", "a100-80g", f"GPU-{i}", i, 80 * GI, 312_000, "nvl0") for i in range(2))))
    server = serve_http(Extender(state), "127.0.0.1", port, tls=ExtenderTLS(cert, key, ca, ("hcs-scheduler",)))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
