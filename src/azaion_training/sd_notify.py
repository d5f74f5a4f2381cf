"""The systemd notify protocol (sd_notify(3)) without a dependency: one AF_UNIX datagram per
state change to the socket named by NOTIFY_SOCKET (a path, or '@name' for the abstract
namespace). Outside systemd (no NOTIFY_SOCKET) every call is a no-op."""

import os
import socket


class Notifier:
    def __init__(self, address: str | None):
        self.address = address or None

    @classmethod
    def from_environment(cls) -> "Notifier":
        return cls(os.environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send e.g. "READY=1"; False when not under systemd or the send failed (never raises:
        a lost notification must not stop the service it reports on)."""
        if self.address is None:
            return False
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(assignments).encode(), address)
        except OSError:
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


def watchdog_timeout_s() -> float | None:
    """WatchdogSec= as systemd passes it (WATCHDOG_USEC, for this process when WATCHDOG_PID is
    set); None when no watchdog is expected. Ping at half of it."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000
