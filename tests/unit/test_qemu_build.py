"""The pure parts of the QEMU choice and build, on real captured QEMU output (tests/data/qemu).

``7.2/`` is Debian 12's QEMU 7.2.22 and ``10.2.2/`` the QEMU 10.2.2 built by ``pokelab qemu``,
each after six gdbstub single-steps (``info-jit.txt``: HMP ``info jit`` through QMP) and their
``--version``.  ``meson-build-edk2-excerpt.txt`` is the part of 10.2.2's meson.build the build edits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.core.errors import InfraError, UsageError
from orchestrator.machine import qemu_binary, qemu_build
from orchestrator.machine.qemu_binary import (
    QemuBinary,
    check_given,
    choose,
    parse_tb_flush_count,
    parse_version,
    version_tuple,
)
from orchestrator.machine.qemu_build import disable_edk2_unpacking, needs_build, parse_ninja_progress

DATA = Path(__file__).resolve().parent.parent / "data" / "qemu"


def _read(*parts: str) -> str:
    return DATA.joinpath(*parts).read_text()


# --------------------------------------------------------------------------- parsing


def test_parse_version_real_outputs() -> None:
    assert parse_version(_read("7.2", "version.txt")) == "7.2.22"
    assert parse_version(_read("10.2.2", "version.txt")) == "10.2.2"


@pytest.mark.parametrize("text", ["", "qemu-img version 7.2.22", "QEMU emulator version x.y"])
def test_parse_version_refuses_other_text(text: str) -> None:
    with pytest.raises(InfraError, match="not a QEMU version line"):
        parse_version(text)


@pytest.mark.parametrize("version, expected", [
    ("7.2.22", (7, 2, 22)), ("10.2.2", (10, 2, 2)), ("10.2", (10, 2)), ("10.2.0-rc1", (10, 2, 0)),
    ("9.2.50", (9, 2, 50)), ("", ()),
])
def test_version_tuple(version: str, expected: tuple[int, ...]) -> None:
    assert version_tuple(version) == expected


def test_parse_tb_flush_count_real_samples() -> None:
    # 7.2 flushed at each of the stops; 10.2.2 never
    assert parse_tb_flush_count(_read("7.2", "info-jit.txt")) == 6
    assert parse_tb_flush_count(_read("10.2.2", "info-jit.txt")) == 0


def test_parse_tb_flush_count_needs_the_line() -> None:
    text = _read("7.2", "info-jit.txt")
    without = "\n".join(ln for ln in text.splitlines() if not ln.startswith("TB flush count"))
    with pytest.raises(InfraError, match="TB flush count"):
        parse_tb_flush_count(without)
    with pytest.raises(InfraError):
        parse_tb_flush_count("info jit is not supported with KVM")  # what a KVM guest would answer


def test_parse_ninja_progress() -> None:
    assert parse_ninja_progress("[357/1789] Compiling C object libqemuutil.a.p/x.c.o") == (357, 1789)
    assert parse_ninja_progress("ninja: build stopped: subcommand failed.") is None


def test_disable_edk2_unpacking(tmp_path: Path) -> None:
    meson = tmp_path / "meson.build"
    meson.write_text(_read("meson-build-edk2-excerpt.txt"))
    disable_edk2_unpacking(meson)
    text = meson.read_text()
    assert "bzip2.found()" not in text
    assert text.count("unpack_edk2_blobs = false") == 2
    with pytest.raises(InfraError, match="another QEMU version"):
        disable_edk2_unpacking(meson)  # the line is gone: a different source must not pass silently


# --------------------------------------------------------------------------- choosing


def _q(version: str, flushes: float | None, origin: str = "host", path: str = "/usr/bin/q") -> QemuBinary:
    return QemuBinary(Path(path), version, origin, tb_flushes_per_stop=flushes)


OLD = _q("7.2.22", 1.0)
FAST_HOST = _q("10.2.2", 0.0)
BUILT = _q("10.2.2", 0.0, "built", "/cache/qemu/10.2.2/qemu-system-x86_64")
GIVEN = _q("7.2.22", 1.0, "given", "/opt/q")


def test_flushes_measured_beats_version() -> None:
    assert OLD.flushes and not FAST_HOST.flushes
    # a 10.0 that measured no flush (a distribution backport) counts as fast; a 10.2 that flushes does not
    assert not _q("10.0.2", 0.0).flushes
    assert _q("10.2.2", 2.0).flushes
    # unmeasured: the version decides
    assert _q("10.0.2", None).flushes and not _q("10.2.0", None).flushes and not _q("11.1.3", None).flushes


@pytest.mark.parametrize("given, host, built, expected", [
    (GIVEN, FAST_HOST, BUILT, GIVEN),      # --qemu wins, even a slow one
    (None, FAST_HOST, BUILT, FAST_HOST),   # a host QEMU without the flush
    (None, OLD, BUILT, BUILT),             # Debian 12: the build
    (None, None, BUILT, BUILT),            # no host QEMU at all
    (None, OLD, None, OLD),                # not built yet: the host's (with a warning)
])
def test_choose(given: QemuBinary | None, host: QemuBinary | None, built: QemuBinary | None,
                expected: QemuBinary) -> None:
    assert choose(given, host, built) == expected


def test_choose_none_at_all() -> None:
    with pytest.raises(InfraError, match=r"not found.*qemu-system-x86.*pokelab qemu"):
        choose(None, None, None)


def test_needs_build() -> None:
    assert needs_build(OLD, None) and needs_build(None, None)
    assert not needs_build(OLD, BUILT) and not needs_build(FAST_HOST, None)


def test_cost_warning_says_what_and_what_to_do() -> None:
    text = qemu_binary.cost_warning(OLD)
    assert "7.2.22" in text and "/usr/bin/q" in text and "TB flushes per stop 1" in text
    assert "pokelab qemu" in text and qemu_binary.BUILD_VERSION in text
    assert "\n" not in text


def test_record() -> None:
    assert BUILT.record() == {"qemu": "/cache/qemu/10.2.2/qemu-system-x86_64", "qemu_version": "10.2.2",
                              "qemu_tb_flushes_per_stop": 0.0}


def test_check_given(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        check_given(tmp_path / "nope")
    with pytest.raises(UsageError, match="is a directory, not an executable file"):
        check_given(tmp_path)
    with pytest.raises(UsageError, match="--qemu-compare /dev/null: not a regular file"):
        check_given(Path("/dev/null"), "--qemu-compare")
    plain = tmp_path / "qemu"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match="not executable"):
        check_given(plain)
    os.chmod(plain, 0o755)
    assert check_given(plain) == plain.resolve()


def test_built_path_needs_its_stamp(tmp_path: Path) -> None:
    d = qemu_binary.install_dir(tmp_path)
    d.mkdir(parents=True)
    (d / qemu_binary.BINARY).write_text("")
    assert qemu_binary.built_path(tmp_path) is None  # a build cut short: no build.json
    (d / "build.json").write_text("{}")
    assert qemu_binary.built_path(tmp_path) == d / qemu_binary.BINARY


def test_a_failed_build_goes_on_only_from_the_same_configuration(tmp_path: Path) -> None:
    work = tmp_path / ".build-10.2.2"
    (work / "qemu-10.2.2" / "build").mkdir(parents=True)
    said: list[str] = []
    assert qemu_build._configured_tree(work, said.append) is None  # never configured
    stamp = {"debian_version": qemu_build.DEBIAN_VERSION, "configure": list(qemu_build.CONFIGURE_ARGS),
             "src": "qemu-10.2.2"}
    (work / "configured.json").write_text(json.dumps(stamp))
    assert qemu_build._configured_tree(work, said.append) is None  # configure did not finish
    (work / "qemu-10.2.2" / "build" / "build.ninja").write_text("")
    assert qemu_build._configured_tree(work, said.append) == work / "qemu-10.2.2"
    assert said and "going on" in said[0]
    for key, other in (("debian_version", "1:10.2.1+ds-1"), ("configure", ["--target-list=all"])):
        (work / "configured.json").write_text(json.dumps({**stamp, key: other}))
        assert qemu_build._configured_tree(work, said.append) is None


def test_kvm_probe_key_follows_the_host_kernel_and_the_qemu(tmp_path: Path) -> None:
    """The cached "KVM boots a guest here" answer is redone for another kernel or QEMU binary."""
    from orchestrator.machine.qemu_binary import QemuBinary, kvm_probe_key

    def uname(release: str) -> os.uname_result:
        return os.uname_result(("Linux", "h", release, "#1 SMP", "x86_64"))

    a, b = tmp_path / "a" / "qemu-system-x86_64", tmp_path / "b" / "qemu-system-x86_64"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"\x7fELF")
    qa = QemuBinary(path=a, version="10.2.2", data_dirs=(), tb_flushes_per_stop=0.0, origin="built")
    key = kvm_probe_key(qa, uname("6.18.1"))
    assert key == kvm_probe_key(qa, uname("6.18.1"))  # stable
    assert key.startswith("6.18.1 #1 SMP | ") and key.endswith(" 10.2.2") and str(a) in key
    assert key != kvm_probe_key(qa, uname("6.19.0"))  # another host kernel
    qb = QemuBinary(path=b, version="10.2.2", data_dirs=(), tb_flushes_per_stop=0.0, origin="given")
    assert key != kvm_probe_key(qb, uname("6.18.1"))  # another binary
    a.write_bytes(b"\x7fELF rebuilt")  # the same path, rebuilt
    assert key != kvm_probe_key(qa, uname("6.18.1"))
    gone = QemuBinary(path=tmp_path / "gone", version="7.2.22", data_dirs=(), tb_flushes_per_stop=None,
                      origin="host")
    assert kvm_probe_key(gone, uname("6.18.1")).endswith(f"{tmp_path / 'gone'}:? 7.2.22")
