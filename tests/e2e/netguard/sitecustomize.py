"""Socket guard for subprocess tests (put this folder on PYTHONPATH): any connect to something
other than loopback or a unix socket is recorded in $NETGUARD_LOG and refused."""

import ipaddress
import os
import socket

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _allowed(sock: socket.socket, address) -> bool:
    if sock.family == socket.AF_UNIX:
        return True
    host = address[0] if isinstance(address, tuple) else address
    return host in ("localhost", "") or _is_loopback_ip(str(host))


def _record(address) -> None:
    with open(os.environ["NETGUARD_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()} connect {address!r}\n")


def _connect(self, address):
    if not _allowed(self, address):
        _record(address)
        raise OSError(f"netguard: network access to {address!r} is not allowed in this test")
    return _real_connect(self, address)


def _connect_ex(self, address):
    if not _allowed(self, address):
        _record(address)
        return 111  # ECONNREFUSED
    return _real_connect_ex(self, address)


def _getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in (None, "localhost", "") and not _is_loopback_ip(name):
        _record(f"resolve {name}")
        raise socket.gaierror(f"netguard: resolving {name!r} is not allowed in this test")
    return _real_getaddrinfo(host, *args, **kwargs)


def _is_loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


if os.environ.get("NETGUARD_LOG"):
    socket.getaddrinfo = _getaddrinfo
    socket.socket.connect = _connect
    socket.socket.connect_ex = _connect_ex
