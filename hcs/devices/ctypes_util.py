"""Small helpers shared by the ctypes backends (Ascend, Hygon, Cambricon)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hcs.devices.backend import VendorError
from hcs.devices.libraries import LoadedLibrary, require_symbols


def bind(lib: LoadedLibrary, signatures: dict[str, tuple[Any, list[Any]]]) -> dict[str, Any]:
    """Resolve and type every function we use up front, naming any missing symbol."""
    require_symbols(lib, tuple(signatures))
    funcs = {}
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib.handle, name)
        fn.restype = restype
        fn.argtypes = argtypes
        funcs[name] = fn
    return funcs


def checker(vendor: str, ok: int = 0) -> Callable[[str, int], None]:
    """Return a function raising VendorError(call, code) when a status code is not ``ok``."""

    def check(call: str, status: int) -> None:
        if status != ok:
            raise VendorError(f"{vendor} {call} returned error {status}")

    return check


def cstr(buf: Any) -> str:
    """NUL-terminated bytes (char array or c_ubyte array) → str."""
    raw = bytes(buf)
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def bus_id(domain: int, bus: int, device: int, function: int) -> str:
    return f"{domain:04x}:{bus:02x}:{device:02x}.{function:x}"


def bind_optional(lib: LoadedLibrary, signatures: dict[str, tuple[Any, list[Any]]]) -> dict[str, Any]:
    """Like ``bind`` for calls a library may lack (older drivers): missing ones are left out."""
    funcs = {}
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib.handle, name, None)
        if fn is None:
            continue
        fn.restype = restype
        fn.argtypes = argtypes
        funcs[name] = fn
    return funcs
