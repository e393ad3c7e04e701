"""host/buildroot: the build-root plan from real headers' control fields, its keys, its commands.

No root, no apt, no network: the control fields were captured from the real .debs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.errors import InfraError
from orchestrator.host import buildroot as br

DATA = Path(__file__).parent.parent / "data" / "buildroot" / "controls.txt"


def _controls() -> dict[str, br.Control]:
    """The captured ``dpkg-deb -f`` records, by package."""
    out = {}
    for block in DATA.read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if line and not line.startswith("#"))
        if fields:
            name = fields["Package"]
            out[name] = br.Control(name, fields["Version"], fields.get("Depends", ""))
    return out


def test_depends_names_first_alternative_no_versions() -> None:
    assert br.depends_names("a (>= 1), b | c (= 2), d:any, e [amd64]") == ["a", "b", "d", "e"]
    assert br.depends_names("") == []


def test_kernel_side() -> None:
    assert br.kernel_side("linux-headers-7.3.4+deb13-common") == "fetch"
    assert br.kernel_side("linux-kbuild-6.1") == "fetch"
    assert br.kernel_side("linux-compiler-gcc-12-x86") == "fetch"
    for skip in ("linux-base", "linux-base-7.3.4+deb13-cloud-amd64",
                 "linux-image-6.12.117+deb12-cloud-amd64"):
        assert br.kernel_side(skip) == "skip"
    assert br.kernel_side("gcc-14-for-host") == br.kernel_side("libelf1t64") == "root"


def test_plan_6_1_bookworm_gcc_12() -> None:
    p = br.plan("6.1.0-56-cloud-amd64", _controls())
    assert (p.suite, p.compiler) == ("bookworm", 12)
    assert p.include == ("binutils", "gcc-12", "libc6", "libelf1", "libssl3", "make", "pahole", "zlib1g")
    # the compiler metapackage is read, not unpacked; linux-kbuild-6.1 is the version fetched
    assert p.unpack == (("linux-headers-6.1.0-56-cloud-amd64", "6.1.192-2"),
                        ("linux-headers-6.1.0-56-common", "6.1.192-2"), ("linux-kbuild-6.1", "6.1.192-3"))


def test_plan_6_12_deb12_skips_the_image_alternative() -> None:
    p = br.plan("6.12.117+deb12-cloud-amd64", _controls())
    assert (p.suite, p.compiler) == ("bookworm", 12)
    # its kbuild needs pahole and zlib1g, 6.1's does not: one bookworm root all the same
    assert p.root_key == br.plan("6.1.0-56-cloud-amd64", _controls()).root_key
    assert [n for n, _ in p.unpack] == ["linux-headers-6.12.117+deb12-cloud-amd64",
                                        "linux-headers-6.12.117+deb12-common", "linux-kbuild-6.12.117+deb12"]


def test_plan_7_x_trixie_one_root_for_every_flavour() -> None:
    cloud = br.plan("7.3.4+deb13-cloud-amd64", _controls())
    rt = br.plan("7.3.4+deb13-rt-amd64", _controls())
    assert (cloud.suite, cloud.compiler) == ("trixie", 14)
    assert cloud.include == ("binutils", "gcc-14-for-host", "libc6", "libelf1t64", "libssl3t64", "make",
                             "pahole", "zlib1g")
    assert cloud.root_key == rt.root_key
    assert cloud.root_dir(Path("/c")) == Path(f"/c/buildroots/trixie-{cloud.root_key}")
    # the flavours share the ABI's -common tree and kbuild, unpacked once each
    shared = set(cloud.unpacked_dirs(Path("/c"))) & set(rt.unpacked_dirs(Path("/c")))
    assert shared == {Path("/c/buildroots/debs/linux-headers-7.3.4+deb13-common_7.3.4-1~bpo13+1"),
                      Path("/c/buildroots/debs/linux-kbuild-7.3.4+deb13_7.3.4-1~bpo13+1")}
    assert br.plan("6.1.0-56-cloud-amd64", _controls()).root_key != cloud.root_key


def test_plan_sid_compiler_newer_than_any_release() -> None:
    p = br.plan("7.2.13+deb14-cloud-amd64", _controls())
    assert (p.suite, p.compiler) == ("sid", 16) and "gcc-16-for-host" in p.include


def test_keys_follow_versions_and_packages() -> None:
    c = _controls()
    p = br.plan("6.1.0-56-cloud-amd64", c)
    kb = c["linux-kbuild-6.1"]
    newer = {**c, "linux-kbuild-6.1": br.Control(kb.package, "6.1.193-1", kb.depends)}
    q = br.plan("6.1.0-56-cloud-amd64", newer)
    assert q.root_key == p.root_key
    assert br.unpacked_dir(Path("/c"), "linux-kbuild-6.1", "6.1.193-1") in q.unpacked_dirs(Path("/c"))
    assert br.unpacked_dir(Path("/c"), "linux-kbuild-6.1", "6.1.192-3") in p.unpacked_dirs(Path("/c"))
    assert br.unpacked_dir(Path("/c"), "x", "1:2.0-1").name == "x_1%3a2.0-1"
    assert br.plan("6.1.0-56-cloud-amd64", c, mirror="http://example.invalid/debian").root_key != p.root_key


def test_plan_errors() -> None:
    c = _controls()
    with pytest.raises(InfraError, match="was not fetched"):
        br.plan("6.1.0-99-cloud-amd64", c)
    no_common = {k: v for k, v in c.items() if k != "linux-headers-6.1.0-56-common"}
    with pytest.raises(InfraError, match=r"common.*not fetched"):
        br.plan("6.1.0-56-cloud-amd64", no_common)
    top = c["linux-headers-7.3.4+deb13-cloud-amd64"]
    no_cc = {**c, top.package: br.Control(top.package, top.version, "linux-kbuild-7.3.4+deb13")}
    with pytest.raises(InfraError, match="names no compiler"):
        br.plan(top.package.removeprefix("linux-headers-"), no_cc)


def test_commands() -> None:
    p = br.plan("7.3.4+deb13-cloud-amd64", _controls())
    assert br.debootstrap_argv(p, Path("/c/r")) == [
        "debootstrap", "--variant=minbase",
        "--include=binutils,gcc-14-for-host,libc6,libelf1t64,libssl3t64,make,pahole,zlib1g",
        "trixie", "/c/r", br.MIRROR]
    binds = [(Path("/h/usr/src/linux-headers-7.3.4+deb13-cloud-amd64"),
              "/usr/src/linux-headers-7.3.4+deb13-cloud-amd64")]
    argv = br.bwrap_argv(Path("/r"), binds, Path("/b"), p.release)
    assert argv[:7] == ["bwrap", "--ro-bind", "/r", "/", "--ro-bind",
                        "/h/usr/src/linux-headers-7.3.4+deb13-cloud-amd64",
                        "/usr/src/linux-headers-7.3.4+deb13-cloud-amd64"]
    assert argv[7:10] == ["--bind", "/b", "/build"]
    assert "--unshare-all" in argv and "--die-with-parent" in argv
    assert argv[-5:] == ["make", "-C", "/usr/src/linux-headers-7.3.4+deb13-cloud-amd64", "M=/build",
                         "modules"]


def test_mounts(tmp_path: Path) -> None:
    for d in ("common/usr/src/linux-headers-7.3.4+deb13-common", "common/usr/share/doc/x",
              "flavour/usr/src/linux-headers-7.3.4+deb13-cloud-amd64",
              "flavour/usr/lib/modules/7.3.4+deb13-cloud-amd64", "kbuild/usr/lib/linux-kbuild-7.3.4+deb13"):
        (tmp_path / d).mkdir(parents=True)
    dirs = [tmp_path / d for d in ("common", "flavour", "kbuild")]
    assert br.mounts(dirs) == [
        (tmp_path / "kbuild/usr/lib/linux-kbuild-7.3.4+deb13", "/usr/lib/linux-kbuild-7.3.4+deb13"),
        (tmp_path / "flavour/usr/src/linux-headers-7.3.4+deb13-cloud-amd64",
         "/usr/src/linux-headers-7.3.4+deb13-cloud-amd64"),
        (tmp_path / "common/usr/src/linux-headers-7.3.4+deb13-common",
         "/usr/src/linux-headers-7.3.4+deb13-common")]
