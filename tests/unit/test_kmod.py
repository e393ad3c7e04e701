"""kmod: the module's cache key and paths, and which scenarios ask for it (no build, no VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.errors import Unsupported
from orchestrator.kernels import kmod
from orchestrator.kernels.images import KernelArtifacts
from orchestrator.run.scenario import guest_files, module_guest_path
from orchestrator.run.scenarios_table import BY_NAME


def _kernel(kid: str, release: str = "6.1.0-56-cloud-amd64") -> KernelArtifacts:
    return KernelArtifacts(id=kid, release=release, bzimage=Path("/nonexistent/bz"),
                           vmlinux=Path("/nonexistent/vmlinux"), system_map=None, config=None,
                           modules_dir=None, build_id="00")


def test_source_hash_depends_on_release_names_and_content() -> None:
    files = {"pokelab_ops.c": b"int x;", "Kbuild": b"obj-m := pokelab_ops.o\n"}
    h = kmod.source_hash(files, "6.1.0-56-cloud-amd64")
    assert len(h) == 16 and h == kmod.source_hash(dict(reversed(files.items())), "6.1.0-56-cloud-amd64")
    assert h != kmod.source_hash(files, "6.12.117+deb12-cloud-amd64")
    assert h != kmod.source_hash({**files, "pokelab_ops.c": b"int y;"}, "6.1.0-56-cloud-amd64")
    assert h != kmod.source_hash({"x.c": files["pokelab_ops.c"], "Kbuild": files["Kbuild"]},
                                 "6.1.0-56-cloud-amd64")
    # a module built another way (the host's compiler for a kernel built here) is another module
    assert h == kmod.source_hash(files, "6.1.0-56-cloud-amd64", kmod.BUILDROOT)
    assert h != kmod.source_hash(files, "6.1.0-56-cloud-amd64", "host")


def test_warnings_are_found_in_make_stderr() -> None:
    # make's stderr of a build in a root without `as` (captured): gcc warned before it failed
    stderr = (b"/usr/src/linux-headers-7.3.4+deb13-common/arch/x86/include/asm/ibt.h:77:1: warning: "
              b"'nocf_check' attribute ignored. Use '-fcf-protection' option to enable it [-Wattributes]\n"
              b"   77 | extern __noendbr bool is_endbr(u32 *val);\n"
              b"make: Leaving directory '/usr/src/linux-headers-7.3.4+deb13-cloud-amd64'\n")
    assert len(kmod._warnings(stderr)) == 1
    assert kmod._warnings(b"  CC [M]  pokelab_ops.o\n  MODPOST Module.symvers\n") == []


def test_paths() -> None:
    assert kmod.module_path(Path("/c"), "6.1.0-56-cloud-amd64", "abcd") == \
        Path("/c/modules/6.1.0-56-cloud-amd64/abcd/pokelab_ops.ko")
    assert module_guest_path("6.1.0-56-cloud-amd64") == \
        "/lib/modules/6.1.0-56-cloud-amd64/extra/pokelab_ops.ko"


def test_the_source_is_there() -> None:
    assert (kmod.source_dir() / "pokelab_ops.c").is_file()
    assert (kmod.source_dir() / "Kbuild").is_file()


def test_users_own_build_and_custom_kernels_without_build_files_are_unsupported(tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match="linux-headers"):
        kmod.ensure_module(_kernel("custom"), tmp_path)
    with pytest.raises(Unsupported, match="no module build files"):
        guest_files(BY_NAME["ops-one"], _kernel("custom-6.1-patched"), tmp_path)
    assert not kmod.is_custom("6.1") and not kmod.is_custom("6.12")


def test_only_module_scenarios_get_files(tmp_path: Path) -> None:
    assert guest_files(BY_NAME["ftrace-function"], _kernel("custom"), tmp_path) == {}
    for name in ("ops-one", "ops-two", "ops-and-tracer"):
        assert "module:pokelab_ops" in [str(r) for r in BY_NAME[name].requirements()]


def test_the_livepatch_module_is_a_second_module_on_the_same_path(tmp_path: Path) -> None:
    assert kmod.LIVEPATCH in kmod.MODULES and kmod.NAME in kmod.MODULES
    src = kmod.source_dir(kmod.LIVEPATCH)
    assert (src / "Kbuild").read_text().strip() == "obj-m := pokelab_lp.o"
    assert 'MODULE_INFO(livepatch, "Y")' in (src / "pokelab_lp.c").read_text()
    assert kmod.module_path(Path("/c"), "r", "ab", kmod.LIVEPATCH) == Path("/c/modules/r/ab/pokelab_lp.ko")
    assert module_guest_path("r", kmod.LIVEPATCH) == "/lib/modules/r/extra/pokelab_lp.ko"
    # the livepatch scenario asks for it by name, and a user's own build cannot have it
    assert "module:pokelab_lp" in [str(r) for r in BY_NAME["livepatch"].requirements()]
    with pytest.raises(Unsupported, match="linux-headers"):
        guest_files(BY_NAME["livepatch"], _kernel("custom"), tmp_path)
