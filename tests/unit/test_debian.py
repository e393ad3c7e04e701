"""Debian's kernel packages as a bisectable sequence, on apt-cache output captured on bookworm."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.core.errors import UsageError
from orchestrator.kernels.catalog import Catalog, parse_name
from orchestrator.kernels.debian import (
    DebianKernel,
    _save_resolved,
    compare_versions,
    kernels_from,
    parse_range,
    parse_show,
    resolve,
    resolve_spec,
    select_range,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "apt"
SHOW = (DATA / "apt-cache-show-cloud-amd64.txt").read_text()


@pytest.fixture(scope="module")
def kernels() -> list[DebianKernel]:
    return kernels_from(parse_show(SHOW))


def test_parse_show_reads_every_record() -> None:
    got = parse_show(SHOW)
    assert got["linux-image-6.1.0-47-cloud-amd64"] == "6.1.170-3"
    assert got["linux-image-6.12.115+deb12-cloud-amd64-dbg"] == "6.12.115-2~deb12u1"
    assert len(got) == 32


def test_kernels_oldest_first_with_and_without_dbg(kernels: list[DebianKernel]) -> None:
    abis = [k.abi for k in kernels]
    assert abis[:3] == ["6.1.0-47", "6.1.0-48", "6.1.0-49"]
    assert abis[-1] == "6.12.117+deb12"
    assert "6.12" not in abis  # the meta-package is not a versioned kernel
    no_dbg = [k.abi for k in kernels if not k.has_dbg]
    assert no_dbg == ["6.1.0-48", "6.1.0-49", "6.1.0-51", "6.1.0-52", "6.12.100+deb12", "6.12.101+deb12"]
    k = kernels[0]
    assert (k.release, k.image_pkg, k.dbg_pkg, k.upstream) == (
        "6.1.0-47-cloud-amd64", "linux-image-6.1.0-47-cloud-amd64",
        "linux-image-6.1.0-47-cloud-amd64-dbg", "v6.1.170")


@pytest.mark.parametrize(("a", "b", "sign"), [
    ("6.1.192-1", "6.1.192-2", -1),
    ("6.1.192-2", "6.12.100-1~deb12u1", -1),
    ("6.12.117-1~deb12u1", "6.12.117-1", -1),  # ~ sorts before anything
    ("6.12.115-2~deb12u1", "6.12.117-1~deb12u1", -1),
    ("1:0.1", "2.0", 1),  # the epoch first
    ("1:2:3-1", "1:2:4-1", -1),  # the epoch ends at the first colon
    ("1.0", "1.0", 0),
    ("1.0a", "1.0", 1),
    ("1.0+b1", "1.0", 1),
    ("1.09", "1.9", 0),
])
def test_compare_versions(a: str, b: str, sign: int) -> None:
    got = compare_versions(a, b)
    assert (got > 0) - (got < 0) == sign
    back = compare_versions(b, a)
    assert (back > 0) - (back < 0) == -sign


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="no dpkg here")
def test_compare_versions_agrees_with_dpkg() -> None:
    versions = [*sorted(set(parse_show(SHOW).values())), "6.1.192-2+b1", "6.1.192~rc1-1"]
    for a, b in itertools.combinations(versions, 2):
        lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0
        assert (compare_versions(a, b) < 0) == lt, (a, b)


def test_select_range_by_abi_version_and_alias(kernels: list[DebianKernel]) -> None:
    rng = select_range(kernels, "6.1.0-47", "6.1.192-2")
    assert [k.abi for k in rng.judged] == ["6.1.0-47", "6.1.0-50", "6.1.0-53", "6.1.0-54", "6.1.0-55",
                                           "6.1.0-56"]
    assert [k.abi for k in rng.unjudgeable] == ["6.1.0-48", "6.1.0-49", "6.1.0-51", "6.1.0-52"]
    assert [k.abi for k in rng.between(rng.judged[0], rng.judged[1])] == ["6.1.0-48", "6.1.0-49"]
    assert rng.between(rng.judged[2], rng.judged[3]) == []
    aliased = select_range(kernels, "6.1.0-55", "6.1", {"6.1": "6.1.0-56-cloud-amd64"})
    assert [k.abi for k in aliased.judged] == ["6.1.0-55", "6.1.0-56"]
    across = select_range(kernels, "6.1.0-56-cloud-amd64", "6.12.107+deb12")
    assert [k.abi for k in across.judged] == ["6.1.0-56", "6.12.107+deb12"]


@pytest.mark.parametrize(("good", "bad", "message"), [
    ("6.1.0-56", "6.1.0-47", "is not older than"),
    ("6.1.0-47", "6.1.0-47", "is not older than"),
    ("6.1.0-48", "6.1.0-56", "good endpoint 6.1.0-48-cloud-amd64 has no -dbg"),
    ("6.1.0-46", "6.1.0-56", "no Debian cloud-amd64 kernel '6.1.0-46'"),
])
def test_select_range_errors(kernels: list[DebianKernel], good: str, bad: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        select_range(kernels, good, bad)


def test_parse_range() -> None:
    assert parse_range("6.1.0-47..6.1.0-56") == ("6.1.0-47", "6.1.0-56")
    for bad in ("6.1.0-47", "..6.1", "6.1..", "a..b..c"):
        with pytest.raises(UsageError, match=r"GOOD\.\.BAD"):
            parse_range(bad)


SHOW7 = (DATA / "apt-cache-show-7.x.txt").read_text()
POLICY7 = (DATA / "apt-cache-policy-7.x.txt").read_text()


@pytest.fixture(scope="module")
def all7() -> list[DebianKernel]:
    """Real 7.x records (trixie-backports and sid, Nov 2026): every flavour, one ABI without -dbg."""
    from orchestrator.host.apt import Apt

    return kernels_from(parse_show(SHOW7), None, Apt.parse_policy(POLICY7))


def test_7x_every_flavour(all7: list[DebianKernel]) -> None:
    assert {k.flavour for k in all7} == {"cloud-amd64", "amd64", "rt-amd64"}
    by = {k.release: k for k in all7}
    assert by["7.3.4+deb13-rt-amd64"].has_dbg and by["7.3.4+deb13-rt-amd64"].version == "7.3.4-1~bpo13+1"
    assert by["7.3.4+deb13-rt-amd64"].suites == ("trixie-backports",)
    assert by["7.2.13+deb14-amd64"].suites == ("sid",) and by["7.2.13+deb14-amd64"].line == "7.2"
    assert not by["7.1.13+deb13-cloud-amd64"].has_dbg
    # dpkg order: 7.2.13-1 (sid) is newer than 7.2.12-1~bpo13+1
    assert [k.abi for k in all7 if k.flavour == "amd64"] == [
        "7.1.13+deb13", "7.2.9+deb13", "7.2.12+deb13", "7.2.13+deb14", "7.3.4+deb13"]


@pytest.mark.parametrize(("name", "release"), [
    ("7.3", "7.3.4+deb13-cloud-amd64"),
    ("7.2", "7.2.13+deb14-cloud-amd64"),  # the newest 7.2 ABI with -dbg, whatever suite carries it
    ("7.2-rt-amd64", "7.2.13+deb14-rt-amd64"),
    ("7.3-amd64", "7.3.4+deb13-amd64"),
    ("7.2.12+deb13-amd64", "7.2.12+deb13-amd64"),
    ("linux-image-7.2.9+deb13-rt-amd64", "7.2.9+deb13-rt-amd64"),
])
def test_resolve_7x(all7: list[DebianKernel], name: str, release: str) -> None:
    req = parse_name(name)
    assert req is not None and resolve(req, all7).release == release


def test_resolve_oldest_and_newest_6_1(kernels: list[DebianKernel]) -> None:
    cat = Catalog.load()
    assert resolve(cat.get("6.1"), kernels).release == "6.1.0-56-cloud-amd64"
    assert resolve(cat.get("6.1-oldest"), kernels).release == "6.1.0-47-cloud-amd64"
    assert resolve(cat.get("6.12"), kernels).release == "6.12.117+deb12-cloud-amd64"
    trixie = DebianKernel("6.12.118+deb13", "cloud-amd64", "6.12.118-1", True)
    assert resolve(cat.get("6.12"), [*kernels, trixie]).release == "6.12.117+deb12-cloud-amd64"
    req = parse_name("6.12")
    assert req is not None and resolve(req, [*kernels, trixie]) == trixie


@pytest.mark.parametrize(("name", "message"), [
    ("7.1", "no Debian 7.1 cloud-amd64 kernel with -dbg .*lines with -dbg: 7.2, 7.3"),
    ("7.1.13+deb13", r"linux-image-7.1.13\+deb13-cloud-amd64 has no -dbg package"),
    ("7.9.1+deb13-rt-amd64", r"no Debian kernel 7.9.1\+deb13-rt-amd64"),
])
def test_resolve_errors(all7: list[DebianKernel], name: str, message: str) -> None:
    req = parse_name(name)
    assert req is not None
    with pytest.raises(UsageError, match=message):
        resolve(req, all7)


def test_resolve_never_picks_an_abi_without_dbg(kernels: list[DebianKernel]) -> None:
    without = [k for k in kernels if k.abi != "6.1.0-56"]  # 6.1.0-55 is then the newest with -dbg
    req = parse_name("6.1")
    assert req is not None and resolve(req, without).abi == "6.1.0-55"


def test_remembered_resolution_is_used_offline(tmp_path: Path, all7: list[DebianKernel]) -> None:
    req = parse_name("7.3-rt-amd64")
    assert req is not None
    with pytest.raises(UsageError, match="never resolved here"):
        resolve_spec(req, tmp_path, offline=True)
    _save_resolved(tmp_path, req.key, resolve(req, all7).spec(req.id))
    again = resolve_spec(req, tmp_path, offline=True)
    assert (again.id, again.release, again.version) == (
        "7.3-rt-amd64", "7.3.4+deb13-rt-amd64", "7.3.4-1~bpo13+1")
    # and without offline, a fresh answer needs no apt at all (tmp_path has no lists)
    assert resolve_spec(req, tmp_path) == again
