"""Our module (images/modules/pokelab_ops) built for a kernel, loaded and driven by hand in a real guest.

Without the probe: the module's own counters say whether its ftrace_ops and its
direct-call trampoline were called by ``getpid()`` (loadgen), and the console
says whether the kernel complained.  ``POKELAB_MODULE_KERNELS`` (comma-separated
ids) chooses the kernels; by default every cached catalog kernel of 7.x (the
ones built in a trixie build root), skipped with the reason when none is cached.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from orchestrator.host.cache import cache_dir
from orchestrator.kernels import kmod
from orchestrator.kernels.catalog import Catalog, KernelRequest
from orchestrator.kernels.debian import cached_spec
from orchestrator.kernels.loadgen import GUEST_PATH, ensure_loadgen
from orchestrator.machine.vm import Vm
from orchestrator.run.prepare import prepare_vm
from orchestrator.run.request import KernelChoice, VmOptions
from orchestrator.run.scenario import module_guest_path

pytestmark = pytest.mark.vm

OPS = "/sys/kernel/debug/pokelab_ops"
FUNCTION = "__do_sys_getpid"
#: what the kernel prints when something went wrong while we drove the module
COMPLAINTS = re.compile(r"WARNING:|BUG:|Oops|Call Trace:|ftrace (faulted|failed)")


def _kernels() -> list[KernelRequest]:
    catalog = Catalog.load()
    wanted = os.environ.get("POKELAB_MODULE_KERNELS")
    if wanted:
        return [catalog.lookup(k) for k in wanted.split(",") if k]
    return [r for r in catalog.kernels if (r.line or r.abi or "").startswith("7.")]


def _ids() -> list[str]:
    return [s.id for s in _kernels()] or ["no-7.x-in-catalog"]


def _counts(text: str) -> dict[str, tuple[int, int]]:
    """``counts``: ``{"ops0": (registered, calls), ..., "direct": (...)}``."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) == 3:
            out[f[0]] = (int(f[1]), int(f[2]))
    return out


@pytest.mark.parametrize("kernel_id", _ids())
def test_module_builds_loads_and_counts(kernel_id: str, tmp_path: Path) -> None:
    specs = {s.id: s for s in _kernels()}
    if kernel_id not in specs:
        pytest.skip("no 7.x kernel in the catalog (set POKELAB_MODULE_KERNELS to choose kernels)")
    cache = cache_dir()
    spec = cached_spec(specs[kernel_id], cache)
    if spec is None:
        pytest.skip(f"kernel {kernel_id} not cached (run `pokelab images --kernel {kernel_id}`)")

    def files(kernel, cache):  # type: ignore[no-untyped-def]
        return {module_guest_path(kernel.release): kmod.ensure_module(kernel, cache)}

    vmspec, kernel = prepare_vm(KernelChoice(kernel=spec.release), VmOptions(smp=2), artifacts=tmp_path,
                                extra_files={GUEST_PATH: ensure_loadgen(cache)}, kernel_files=files)
    with Vm(vmspec) as vm:
        vm.start()
        assert vm.wait_ready() == kernel.release
        vm.check(f"insmod {module_guest_path(kernel.release)} && test -w {OPS}/control")
        assert _counts(vm.check(f"cat {OPS}/counts"))["ops0"] == (0, 0)
        load = f"{GUEST_PATH} getpid 1 >/dev/null 2>&1"

        # ops0 (plain) and ops1 (SAVE_REGS) on one function: both are called by getpid()
        vm.check(f"echo 'register 0 {FUNCTION}' > {OPS}/control")
        vm.check(f"echo 'register 1 {FUNCTION}' > {OPS}/control")
        vm.check(load)
        c = _counts(vm.check(f"cat {OPS}/counts"))
        print(f"{kernel.release}: after 1 s of getpid with ops0+ops1: {c}")
        assert c["ops0"][0] == c["ops1"][0] == 1 and c["ops0"][1] > 1000 and c["ops1"][1] > 1000, c
        vm.check(f"echo 'unregister 1' > {OPS}/control && echo 'unregister 0' > {OPS}/control")
        before = _counts(vm.check(f"cat {OPS}/counts"))
        vm.check(load)
        after = _counts(vm.check(f"cat {OPS}/counts"))
        assert after["ops0"] == before["ops0"] and after["ops0"][0] == 0, (before, after)

        # the direct-call trampoline, alone on the function
        if "direct" in c:
            vm.check(f"echo 'direct on {FUNCTION}' > {OPS}/control")
            vm.check(load)
            d = _counts(vm.check(f"cat {OPS}/counts"))["direct"]
            print(f"{kernel.release}: after 1 s of getpid with the direct trampoline: {d}")
            assert d[0] == 1 and d[1] > 1000, d
            vm.check(f"echo 'direct off' > {OPS}/control && grep -q '^direct 0 ' {OPS}/counts")

        vm.check(f"rmmod {kmod.NAME}")
        dmesg = vm.check("dmesg")
        assert not COMPLAINTS.search(dmesg), COMPLAINTS.search(dmesg)
        assert vm.check(f"grep -c '^{kmod.NAME} ' /proc/modules; true").strip() == "0"
