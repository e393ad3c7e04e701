"""Every Debian flavour boots to SSH: generic ``amd64`` and ``rt-amd64`` (PREEMPT_RT) 7.x kernels.

Their virtio drivers are modules (``virtio_pci``, ``virtio_net`` and what modules.dep
pulls in, e.g. ``net_failover``/``failover``), shipped as .ko.xz: a boot to SSH shows
the kernel's own modules reached the initramfs and loaded.  Through the real CLI, as a
user would run it: ``pokelab run-cmd --kernel 7.3-amd64 -- uname -a``.  The kernels are
the catalog's line ids, resolved to the newest 7.3 ABI with -dbg the archive lists.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.host.cache import cache_dir
from orchestrator.kernels.catalog import Catalog, KernelSpec
from orchestrator.kernels.debian import cached_spec
from orchestrator.kernels.images import ensure_kernel

pytestmark = pytest.mark.vm

POKELAB = [sys.executable, "-m", "orchestrator.cli"]
FLAVOURS = {"7.3-amd64": "PREEMPT_DYNAMIC", "7.3-rt-amd64": "PREEMPT_RT"}


#: CONFIG_ option -> module name, for the drivers the guest needs to reach SSH
DRIVERS = {"VIRTIO_PCI": "virtio_pci", "VIRTIO_NET": "virtio_net", "NET_FAILOVER": "net_failover"}


def modular(spec: KernelSpec) -> set[str]:
    """The needed drivers this kernel's config builds as modules (=m)."""
    config = ensure_kernel(spec, cache_dir()).config
    assert config is not None
    text = config.read_text()
    return {mod for opt, mod in DRIVERS.items() if f"\nCONFIG_{opt}=m\n" in text}


@pytest.mark.parametrize("kid", list(FLAVOURS))
def test_flavour_boots_to_ssh_with_its_own_virtio_modules(kid: str, tmp_path: Path) -> None:
    spec = cached_spec(Catalog.load().get(kid), cache_dir())
    if spec is None:
        pytest.skip(f"kernel {kid} not fetched here (run `pokelab images --kernel {kid}`)")
    res = subprocess.run([*POKELAB, "run-cmd", "--kernel", spec.release, "--artifacts", str(tmp_path / "art"),
                          "--", "uname -a; echo; cat /proc/modules"],
                         capture_output=True, text=True, timeout=900, check=False)
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stderr
    uname, _, modules = res.stdout.partition("\n\n")
    assert uname.startswith(f"Linux pokelab {spec.release} ") and FLAVOURS[kid] in uname, uname
    loaded = {line.split()[0] for line in modules.splitlines() if line.strip()}
    # what this kernel builds as modules must have come from the initramfs (7.x: virtio_pci is
    # built in, virtio_net/net_failover/failover are modules)
    assert modular(spec) and modular(spec) <= loaded, (modular(spec), loaded)


def test_own_build_with_modules_dir_boots(tmp_path: Path) -> None:
    """``--bzimage/--vmlinux --modules DIR``: a build whose virtio-net is a module boots to SSH.

    The build here is Debian's generic 7.3 kernel given as files (its lib/modules/<release>
    tree as shipped: .ko.xz and a modules.dep), as a user would give their own.
    """
    spec = cached_spec(Catalog.load().get("7.3-amd64"), cache_dir())
    if spec is None:
        pytest.skip("kernel 7.3-amd64 not fetched here (run `pokelab images --kernel 7.3-amd64`)")
    k = ensure_kernel(spec, cache_dir())
    assert k.modules_dir is not None and modular(spec)
    res = subprocess.run([*POKELAB, "run-cmd", "--bzimage", str(k.bzimage), "--vmlinux", str(k.vmlinux),
                          "--modules", str(k.modules_dir), "--artifacts", str(tmp_path / "art"),
                          "--", "uname -r; cat /proc/modules"],
                         capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    release, _, modules = res.stdout.partition("\n")
    assert release == spec.release
    assert modular(spec) <= {line.split()[0] for line in modules.splitlines() if line.strip()}
