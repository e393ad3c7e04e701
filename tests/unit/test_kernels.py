"""The kernel catalog loader, on the real images/kernels.toml and on bad copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.kernels import Catalog, KernelSpec, images_dir

GOOD = images_dir() / "kernels.toml"


def test_real_catalog_entries() -> None:
    cat = Catalog.load()
    assert cat.ids[:3] == ("6.1", "6.12", "6.1.0-47")
    assert cat.default == KernelSpec(
        "6.1",
        "6.1.0-56-cloud-amd64",
        "linux-image-6.1.0-56-cloud-amd64",
        "linux-image-6.1.0-56-cloud-amd64-dbg",
        True,
    )
    k612 = cat.get("6.12")
    assert k612.release == "6.12.117+deb12-cloud-amd64"
    assert k612.dbg_pkg == "linux-image-6.12.117+deb12-cloud-amd64-dbg"
    assert not cat.get("6.1.0-47").default


def test_lookup_by_release() -> None:
    cat = Catalog.load()
    for spec in cat.kernels:
        assert cat.get(spec.release) is spec
        assert spec.image_pkg == f"linux-image-{spec.release}"
        assert spec.dbg_pkg == f"{spec.image_pkg}-dbg"


def test_unknown_kernel_lists_known() -> None:
    with pytest.raises(UsageError) as err:
        Catalog.load().get("5.10")
    assert err.value.title.startswith("unknown kernel '5.10' (known: 6.1, 6.12, 6.1.0-47, ")


def test_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kernels.toml").write_text(GOOD.read_text())
    monkeypatch.setenv("POKELAB_IMAGES", str(tmp_path))
    assert images_dir() == tmp_path.resolve()
    assert Catalog.load().default.id == "6.1"


def _bad(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kernels.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        Catalog.load(path)
    assert "\n" not in err.value.title
    return err.value.title


def test_two_defaults(tmp_path: Path) -> None:
    text = GOOD.read_text().replace('id = "6.1.0-47"', 'id = "6.1.0-47"\ndefault = true')
    assert "exactly one default, found 2" in _bad(tmp_path, text)


def test_no_default(tmp_path: Path) -> None:
    text = GOOD.read_text().replace("default = true", "")
    assert "exactly one default, found 0" in _bad(tmp_path, text)


def test_duplicate_id(tmp_path: Path) -> None:
    text = GOOD.read_text().replace('id = "6.12"', 'id = "6.1"')
    assert "'6.1' is used twice" in _bad(tmp_path, text)


def test_missing_field_and_syntax(tmp_path: Path) -> None:
    assert "'dbg_pkg'" in _bad(tmp_path, '[[kernel]]\nid="x"\nrelease="r"\nimage_pkg="p"\n')
    assert "bad kernel catalog" in _bad(tmp_path, "[[kernel]\n")
    assert "no [[kernel]] entries" in _bad(tmp_path, "title = 'x'\n")
    with pytest.raises(UsageError, match="not found"):
        Catalog.load(tmp_path / "nope.toml")


def test_lookup_takes_debian_abis_outside_the_catalog() -> None:
    cat = Catalog.load()
    assert cat.lookup("6.1") == cat.default
    spec = cat.lookup("6.1.0-50")
    assert (spec.id, spec.release, spec.dbg_pkg) == (
        "6.1.0-50", "6.1.0-50-cloud-amd64", "linux-image-6.1.0-50-cloud-amd64-dbg")
    with pytest.raises(UsageError, match="unknown kernel 'nope'"):
        cat.lookup("nope")
