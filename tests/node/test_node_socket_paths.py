"""gRPC servers listen on every unix-socket path the kernel accepts (up to 107 bytes).

grpcio 1.85 refuses ``unix://`` server paths of 106-107 bytes; a kubelet plugin socket that passed the
config check (<= 107 bytes) must still serve. Real gRPC over a real unix socket.
"""

from __future__ import annotations

import contextlib
import os
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from hcs.api.gen.pluginregistration.v1 import api_pb2 as reg
from hcs.api.gen.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from hcs.uds import listen_address


class _Registration(reg_grpc.RegistrationServicer):  # type: ignore[misc]
    def GetInfo(self, request, context):  # noqa: N802
        return reg.PluginInfo(type="DRAPlugin", name="ai.compute")


def _socket_of_length(base: Path, length: int) -> Path:
    d = base / "s"
    d.mkdir(exist_ok=True)
    name = "x" * (length - len(str(d)) - 1)
    assert name, f"tmp dir {d} too long for a {length}-byte path"
    return d / name


@pytest.mark.parametrize("length", [90, 106, 107])
def test_a_server_listens_and_answers_on_a_socket_path_of(length: int) -> None:
    base = Path("/tmp") / f"hcs-uds-{os.getpid()}"
    base.mkdir(exist_ok=True)
    sock = _socket_of_length(base, length)
    assert len(os.fsencode(str(sock))) == length
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    reg_grpc.add_RegistrationServicer_to_server(_Registration(), server)
    try:
        assert server.add_insecure_port(listen_address(sock)) != 0
        server.start()
        with grpc.insecure_channel(f"unix://{sock}") as ch:
            info = reg_grpc.RegistrationStub(ch).GetInfo(reg.InfoRequest(), timeout=5)
        assert info.name == "ai.compute"
    finally:
        server.stop(0)
        for p in (sock, sock.parent, base):
            with contextlib.suppress(OSError):
                p.unlink() if p == sock else p.rmdir()


def test_listen_address_forms() -> None:
    assert listen_address("unix:///run/hcs/a.sock") == "unix:/run/hcs/a.sock"
    assert listen_address(Path("/run/hcs/a.sock")) == "unix:/run/hcs/a.sock"
    assert listen_address("/run/hcs/a.sock") == "unix:/run/hcs/a.sock"
    assert listen_address("unix:/run/hcs/a.sock") == "unix:/run/hcs/a.sock"
    assert listen_address("127.0.0.1:8443") == "127.0.0.1:8443"
    assert listen_address(Path("rel.sock")) == "unix:" + os.path.abspath("rel.sock")
