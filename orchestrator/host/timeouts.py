"""The waits' deadlines, scaled by one factor for slow emulation (cf. syzkaller's Timeouts.Scale)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timeouts:
    """All waits pokelab makes, in seconds, for KVM; ``scale`` stretches them for TCG."""

    scale: float = 1.0
    qemu_start: float = 10.0
    boot_marker: float = 30.0
    ssh_connect: float = 30.0
    ssh_command: float = 60.0
    qmp: float = 10.0
    gdb_command: float = 60.0
    shutdown: float = 10.0

    def get(self, name: str) -> float:
        return float(getattr(self, name)) * self.scale


KVM = Timeouts(scale=1.0)
TCG = Timeouts(scale=3.0)

