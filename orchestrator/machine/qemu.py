"""QEMU: the argv (a pure function of a frozen config) and accelerator detection."""

from __future__ import annotations

import logging
import os
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UsageError

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"

#: Always on the kernel command line.  ``nokaslr`` lets GDB use vmlinux addresses
#: as they are; ``panic=-1`` with ``-no-reboot`` makes a panic end QEMU.
#: ``loglevel=6`` keeps the banner, warnings and oopses but drops KERN_INFO chatter
#: (printk to an emulated UART is slow under TCG); ``lpj=`` skips the per-CPU
#: delay-loop calibration (~0.15 s per vCPU; x86 delays use the TSC anyway).
#: ``cryptomgr.notests`` skips the crypto self-tests (0.4-0.7 s of a TCG boot, measured:
#: ``crypto_algapi_init``'s deferred tests and ``crypto_kdf108_init``'s hmac(sha256));
#: ``no_timer_check`` skips the IO-APIC timer-IRQ check (a few 10 ms of delay loops on ``pc``).
#: ``initcall_blacklist=crypto_kdf108_init``: that initcall is only the CTR-KDF self-test
#: (hmac(sha256), which ``cryptomgr.notests`` does not skip): 70-100 ms of a TCG boot (initcall_debug).
BASE_APPEND = ("console=ttyS0", "nokaslr", "panic=-1", "earlyprintk=serial,ttyS0",
               "loglevel=6", "lpj=4231920", "cryptomgr.notests", "no_timer_check",
               "initcall_blacklist=crypto_kdf108_init")

#: The machine types pokelab boots (``--machine``).  ``pc`` (i440FX, PCI, the default) or
#: ``microvm`` (no PCI, no firmware tables but ACPI's; virtio-mmio devices it lists in its DSDT).
MACHINES = ("pc", "microvm")

#: microvm's options: no legacy PIC or PIT (the kernel routes through the IOAPIC and ticks on
#: the local APIC timer; under TCG it marks the TSC unstable and keeps time on jiffies), the
#: CMOS RTC kept (without it Linux spends ~1.5 s in ``mach_get_cmos_time()`` and ~0.6 s more
#: in rtc_cmos's probe, measured under TCG), the ISA UART that is ``ttyS0`` kept, ACPI on (the
#: virtio-mmio devices are found through it: Debian's kernels have ``CONFIG_VIRTIO_MMIO=m``
#: without ``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES``).  qboot (``bios-microvm.bin``) loads the
#: bzImage through its linuxboot option ROM, so option ROMs stay on.
MICROVM = "microvm,pit=off,pic=off,rtc=on,isa-serial=on,acpi=on"

#: The most vCPUs pokelab boots (``--smp``; QEMU's ``pc`` takes up to 255): the recorder finds a
#: vCPU's CPU number among the first 64 entries of ``__per_cpu_offset`` (``gdb/data/pokelab_layout.py``).
MAX_SMP = 64

#: TCG's CPU: the default qemu64 plus RDRAND, so the guest's CRNG is ready at once
#: (without it dropbear's first login waited for entropy).
TCG_CPU = "qemu64,+rdrand"


@dataclass(frozen=True)
class QemuConfig:
    """Everything that decides the QEMU command line.  Validated at construction."""

    kernel_image: Path  # QEMU's -kernel: a bzImage, or an ELF kernel with a PVH entry
    initrd: Path
    workdir: Path  # unix sockets live here
    gdb_port: int
    ssh_port: int
    smp: int = 4
    memory_mb: int = 1024
    accel: str = "tcg"  # "tcg" or "kvm"
    tcg_thread: str = "single"  # "multi" is known unstable for text_poke (see docs)
    machine: str = "pc"  # one of MACHINES
    #: the host's TSC rate in kHz, given to a microvm guest as ``tsc_early_khz=`` (it has no
    #: PM timer or HPET to calibrate the TSC against); see ``host.tsc.host_tsc_khz``
    tsc_khz: int | None = None
    append: tuple[str, ...] = ()
    qemu: str = QEMU
    #: ``-L`` directories (BIOS, option ROMs), first wins; empty: the binary's built-in ones
    data_dirs: tuple[str, ...] = ()
    extra: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.accel not in ("tcg", "kvm"):
            raise UsageError(f"unknown accelerator '{self.accel}' (tcg or kvm)")
        if self.machine not in MACHINES:
            raise UsageError(f"unknown machine '{self.machine}' ({' or '.join(MACHINES)})")
        if self.machine == "microvm" and self.accel == "tcg" and not self.tsc_khz:
            raise UsageError("a microvm guest under TCG needs the host's TSC rate (tsc_khz)")
        if self.tcg_thread not in ("single", "multi"):
            raise UsageError(f"unknown TCG thread mode '{self.tcg_thread}' (single or multi)")
        if not 1 <= self.smp <= MAX_SMP:
            raise UsageError(f"--smp must be 1..{MAX_SMP}, not {self.smp}")
        if self.memory_mb < 256:
            raise UsageError(f"--memory must be at least 256 MiB, not {self.memory_mb}")
        for word in self.append:
            if word.split("=", 1)[0] == "kaslr":
                raise UsageError("KASLR must stay off: GDB reads vmlinux addresses as they are")

    @property
    def qmp_socket(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def serial_socket(self) -> Path:
        return self.workdir / "console.sock"

    @property
    def cmdline(self) -> str:
        tsc = (f"tsc_early_khz={self.tsc_khz}",) if self.machine == "microvm" and self.tsc_khz else ()
        return " ".join(BASE_APPEND + tsc + self.append)


def build_argv(cfg: QemuConfig) -> list[str]:
    """The QEMU command line, as a list.  Pure: same config, same argv.

    The virtio devices sit on PCI for ``pc`` (``virtio-*-pci``) and on virtio-mmio for
    ``microvm`` (``virtio-*-device``); everything else is the same.
    """
    if cfg.machine == "microvm":
        machine, bus = MICROVM, "device"
    else:
        machine, bus = "pc", "pci"
    if cfg.accel == "kvm":
        accel = ["-accel", "kvm", "-cpu", "host"]
    else:
        accel = ["-accel", f"tcg,thread={cfg.tcg_thread}", "-cpu", TCG_CPU]
    return [
        cfg.qemu,
        *[a for d in cfg.data_dirs for a in ("-L", d)],
        "-name", "pokelab",
        "-machine", machine,
        *accel,
        "-smp", str(cfg.smp),
        "-m", str(cfg.memory_mb),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-no-reboot",
        "-S",
        "-kernel", str(cfg.kernel_image),
        "-initrd", str(cfg.initrd),
        "-append", cfg.cmdline,
        "-qmp", f"unix:{cfg.qmp_socket},server=on,wait=off",
        "-chardev", f"socket,id=con0,path={cfg.serial_socket},server=on,wait=off",
        "-serial", "chardev:con0",
        "-gdb", f"tcp:127.0.0.1:{cfg.gdb_port}",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{cfg.ssh_port}-:22",
        "-device", f"virtio-net-{bus},netdev=n0" + (",romfile=" if bus == "pci" else ""),
        "-device", f"virtio-rng-{bus}",
        *cfg.extra,
    ]


def repro_script(argv: list[str], note: str = "") -> str:
    """A shell script that reruns this QEMU by hand (``-S`` dropped so it runs at once)."""
    shown = [a for a in argv if a != "-S"]
    lines = ["#!/bin/sh", "# Rerun this pokelab guest by hand.", f"# {note}" if note else "",
             "# Attach GDB with: gdb VMLINUX -ex 'target remote 127.0.0.1:PORT'",
             f"mkdir -p {shlex.quote(str(Path(shown[shown.index('-qmp') + 1].split(',')[0][5:]).parent))}",
             "exec " + shlex.join(shown), ""]
    return "\n".join(line for line in lines if line != "") + "\n"


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (QEMU may still lose the race: caller retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port_free(port: int) -> None:
    """UsageError if ``port`` is not a TCP port or is already taken on 127.0.0.1."""
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} is not a TCP port (1..65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"port {port} on 127.0.0.1 is busy") from None


def kvm_device_usable() -> bool:
    """``/dev/kvm`` opens.  Not proof that KVM runs guests: see ``guest.choose_accel``."""
    return os.access("/dev/kvm", os.R_OK | os.W_OK)
