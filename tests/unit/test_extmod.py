"""extmod: which files of a kernel build an out-of-tree module build keeps (builddeb's lists)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.errors import InfraError
from orchestrator.kernels import extmod


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("objtool", [True, False])
def test_install_keeps_headers_scripts_and_generated_files(tmp_path: Path, objtool: bool) -> None:
    tree, out = tmp_path / "tree", tmp_path / "out"
    _touch(tree, "Makefile", "Kbuild", "arch/x86/Makefile", "arch/x86/Makefile_32.cpu",
           "include/linux/ftrace.h", "scripts/Makefile.modpost", "arch/x86/include/asm/text-patching.h",
           "arch/x86/tools/Makefile",
           "arch/x86/entry/syscalls/Makefile", "drivers/net/virtio_net.c", "arch/x86/kernel/alternative.c")
    config = "CONFIG_X86_64=y\n" + ("CONFIG_OBJTOOL=y\n" if objtool else "# CONFIG_OBJTOOL is not set\n")
    _touch(out, "Module.symvers", "include/generated/autoconf.h", "include/config/auto.conf",
           "arch/x86/include/generated/asm/orc_hash.h", "scripts/mod/modpost", "tools/objtool/objtool",
           "vmlinux", "arch/x86/kernel/alternative.o")
    (out / ".config").write_text(config)
    dest = extmod.install(tree, out, tmp_path / "kernel" / "build")
    got = _files(dest)
    assert {"Makefile", "arch/x86/Makefile", "arch/x86/Makefile_32.cpu", "include/linux/ftrace.h",
            "scripts/Makefile.modpost", "arch/x86/include/asm/text-patching.h", "Module.symvers",
            "include/generated/autoconf.h", "include/config/auto.conf",
            "arch/x86/include/generated/asm/orc_hash.h", "scripts/mod/modpost", ".config"} <= got
    assert ("tools/objtool/objtool" in got) is objtool
    for left_out in ("drivers/net/virtio_net.c", "arch/x86/kernel/alternative.c", "vmlinux",
                     "arch/x86/kernel/alternative.o", "Kbuild", "arch/x86/tools/Makefile"):
        assert left_out not in got
    assert not (tmp_path / "kernel" / "build.tmp").exists()


def test_an_unfinished_build_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(InfraError, match="not a finished kernel build"):
        extmod.install(tmp_path, tmp_path / "out", tmp_path / "build")


def test_objtool_enabled() -> None:
    assert extmod.objtool_enabled("CONFIG_A=y\nCONFIG_OBJTOOL=y\n")
    assert not extmod.objtool_enabled("# CONFIG_OBJTOOL is not set\nCONFIG_OBJTOOL_X=y\n")
