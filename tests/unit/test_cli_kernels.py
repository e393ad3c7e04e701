"""``pokelab kernels``: the catalog and kernels built here (``--debian``, what apt has: tests/host)."""

from __future__ import annotations

import re
import subprocess
import sys

POKELAB = [sys.executable, "-m", "orchestrator.cli"]


def test_catalog_listing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With an empty cache (the host's is never read here); what a kernel resolved to: test_cli_input."""
    import os

    res = subprocess.run([*POKELAB, "kernels"], capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "POKELAB_CACHE": str(tmp_path / "c"), "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert re.search(r"^6\.1 +the newest 6\.1 cloud-amd64 kernel with -dbg, default, never resolved here "
                     r"\(the archive is asked when first used\), not cached$", res.stdout, re.M)
    assert re.search(r"^7\.3-rt-amd64 +the newest 7\.3 rt-amd64 kernel with -dbg, ", res.stdout, re.M)


def _cache(tmp_path):  # type: ignore[no-untyped-def]
    """A cache holding one built kernel and one fetched Debian kernel (files of known sizes)."""
    import json

    kernels = tmp_path / "kernels"
    built = kernels / "custom-00aa11bb22cc"
    built.mkdir(parents=True)
    (built / "vmlinux").write_bytes(b"x" * 3_000_000)
    (kernels / "custom.json").write_text(json.dumps({"custom-00aa11bb22cc": {
        "dir": str(built), "release": "6.1.192", "build_id": "00aa11bb22cc" + "0" * 28}}))
    deb_kernel = kernels / "6.1.0-50-cloud-amd64"
    deb_kernel.mkdir()
    (deb_kernel / "vmlinux-6.1.0-50-cloud-amd64").write_bytes(b"y" * 2_000_000)
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "linux-image-6.1.0-50-cloud-amd64_6.1.176-1_amd64.deb").write_bytes(b"z" * 1_000_000)
    (debs / "linux-image-6.1.0-50-cloud-amd64-unsigned_6.1.176-1_amd64.deb").write_bytes(b"keep")
    return tmp_path


def test_remove_frees_built_and_fetched_kernels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import os

    cache = _cache(tmp_path)
    env = {**os.environ, "POKELAB_CACHE": str(cache)}
    res = subprocess.run([*POKELAB, "kernels", "--remove", "built", "6.1.0-50"], capture_output=True,
                         text=True, timeout=60, check=False, env=env)
    assert res.returncode == 0, res.stderr
    assert "removed custom-00aa11bb22cc (3 MB)" in res.stdout
    assert "removed 6.1.0-50-cloud-amd64 (3 MB)" in res.stdout  # its dir and its image .deb
    assert "freed 6 MB" in res.stdout
    assert json.loads((cache / "kernels" / "custom.json").read_text()) == {}
    assert not (cache / "kernels" / "custom-00aa11bb22cc").exists()
    assert not (cache / "kernels" / "6.1.0-50-cloud-amd64").exists()
    assert [p.name for p in (cache / "debs").iterdir()] == [
        "linux-image-6.1.0-50-cloud-amd64-unsigned_6.1.176-1_amd64.deb"]  # another package: kept


def test_remove_refuses_what_was_not_built_here(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    cache = _cache(tmp_path)
    env = {**os.environ, "POKELAB_CACHE": str(cache)}
    for name, needle in (("custom-ffff", "no kernel 'custom-ffff' was built here"),
                         ("nope", "unknown kernel 'nope'")):
        res = subprocess.run([*POKELAB, "kernels", "--remove", name], capture_output=True, text=True,
                             timeout=60, check=False, env=env)
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr.startswith("pokelab: usage: ") and needle in res.stderr, res.stderr
    assert (cache / "kernels" / "custom-00aa11bb22cc" / "vmlinux").is_file()
