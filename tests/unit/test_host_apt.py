"""orchestrator.host.apt's pure parts: records and version order by python-debian, and its apt options."""

from __future__ import annotations

from pathlib import Path

from orchestrator.host.apt import Apt, deb_version, newest_first, parse_records, sources_list

DATA = Path(__file__).resolve().parent.parent / "data" / "apt"


def test_dpkg_order() -> None:
    # ~ sorts before everything, the epoch wins, revisions compare numerically
    assert newest_first(["6.1.99-1", "6.1.170-3", "1:0.1-1", "6.1.170-3~bpo12+1", "6.1.170-10"]) == [
        "1:0.1-1", "6.1.170-10", "6.1.170-3", "6.1.170-3~bpo12+1", "6.1.99-1"]


def test_records_of_captured_show() -> None:
    recs = parse_records((DATA / "apt-cache-show-cloud-amd64.txt").read_text())
    assert recs and all(r["Package"].startswith("linux-image-") and r["Version"] for r in recs)
    assert any(r["Package"].endswith("-dbg") for r in recs)


def test_deb_version_epoch() -> None:
    assert deb_version(Path("busybox-static_1%3a1.35.0-4+b3_amd64.deb")) == "1:1.35.0-4+b3"


def test_options_point_at_pokelab_state_only(tmp_path: Path) -> None:
    opts = Apt(tmp_path).options()
    pairs = dict(o.split("=", 1) for o in opts[1::2])
    assert pairs["Dir::Etc::SourceList"] == str(sources_list())
    assert all(str(tmp_path) in pairs[k] for k in ("Dir::State::Lists", "Dir::State::status", "Dir::Cache",
                                                   "Dir::Etc::SourceParts"))
    text = sources_list().read_text()
    for suite in ("bookworm", "bookworm-security", "trixie", "trixie-backports", "sid"):
        assert f" {suite} main" in text
    assert "deb-src " in text and "/etc/apt" not in " ".join(opts)


def test_a_query_on_fresh_lists_leaves_the_status_file_alone(tmp_path: Path) -> None:
    """Each query touched ``<cache>/apt/status``: newer than apt's pkgcache.bin, which apt-cache then
    rebuilt (93 MB here), in every run and in every ``--dry-run`` that looks a kernel up."""
    import os

    from orchestrator.host import apt as apt_mod

    first = Apt(tmp_path, max_age_s=float("inf"))
    first.lists.mkdir(parents=True)
    (first.lists / apt_mod._STAMP).write_text(first._sources_digest() + "\n")
    first.update()
    status = tmp_path / "apt" / "status"
    assert status.is_file() and status.stat().st_size == 0
    os.utime(status, (1_000_000, 1_000_000))
    Apt(tmp_path, max_age_s=float("inf")).update()
    assert status.stat().st_mtime == 1_000_000
