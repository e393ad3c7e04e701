"""The kernel catalog loader and kernel names, on the real images/kernels.toml and on bad copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.errors import UsageError
from orchestrator.kernels.catalog import (
    Catalog,
    KernelRequest,
    KernelSpec,
    images_dir,
    line_of,
    parse_name,
)

GOOD = images_dir() / "kernels.toml"


def test_real_catalog_entries() -> None:
    cat = Catalog.load()
    assert cat.ids[:3] == ("6.1", "6.12", "6.1-oldest")
    # the default stays the newest 6.1 cloud kernel, whichever ABI that is today
    assert cat.default == KernelRequest("6.1", "cloud-amd64", line="6.1", default=True)
    assert cat.get("6.1-oldest").pick == "oldest" and not cat.get("6.1-oldest").default
    assert {cat.get(k).flavour for k in cat.ids} == {"cloud-amd64", "amd64", "rt-amd64"}
    assert all(k.abi is None for k in cat.kernels)  # no entry pins an ABI the archive can drop


def test_unknown_kernel_lists_known() -> None:
    with pytest.raises(UsageError) as err:
        Catalog.load().get("5.10")
    assert err.value.title.startswith("unknown kernel '5.10' (known: 6.1, 6.12, 6.1-oldest, ")


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
    text = GOOD.read_text().replace('id = "6.12"', 'id = "6.12"\ndefault = true')
    assert "exactly one default, found 2" in _bad(tmp_path, text)


def test_no_default(tmp_path: Path) -> None:
    text = GOOD.read_text().replace("default = true", "")
    assert "exactly one default, found 0" in _bad(tmp_path, text)


def test_duplicate_id(tmp_path: Path) -> None:
    text = GOOD.read_text().replace('id = "6.12"', 'id = "6.1"')
    assert "'6.1' is used twice" in _bad(tmp_path, text)


@pytest.mark.parametrize(("entry", "message"), [
    ('id="x"\n', "exactly one of 'line'"),
    ('id="x"\nline="6.1"\nabi="6.1.0-57"\n', "exactly one of 'line'"),
    ('id="x"\nline="6"\n', "not an upstream line"),
    ('id="x"\nabi="6.1.0"\n', "not a Debian ABI"),
    ('id="x"\nline="6.1"\nflavour="arm64"\n', "'flavour' 'arm64' is not one of cloud-amd64, amd64, rt-amd64"),
    ('id="x"\nline="6.1"\npick="middle"\n', "'pick' is newest or oldest"),
    ('id="x"\nabi="6.1.0-57"\npick="oldest"\n', "for a 'line' only"),
    ('id="x"\nline="6.1"\nrelease="r"\n', "unknown keys ['release']"),
    ('id="x"\nline="6.12"\nabi_suffix="deb12"\n', "'abi_suffix' is +debNN"),
    ('id="x"\nabi="6.1.0-57"\nabi_suffix="+deb12"\n', "for a 'line' only"),
    ('line="6.1"\n', "needs a non-empty string 'id'"),
])
def test_bad_entries(tmp_path: Path, entry: str, message: str) -> None:
    assert message in _bad(tmp_path, "[[kernel]]\n" + entry + "default = true\n")


def test_bad_syntax(tmp_path: Path) -> None:
    assert "bad kernel catalog" in _bad(tmp_path, "[[kernel]\n")
    assert "no [[kernel]] entries" in _bad(tmp_path, "title = 'x'\n")
    with pytest.raises(UsageError, match="not found"):
        Catalog.load(tmp_path / "nope.toml")


@pytest.mark.parametrize(("name", "flavour", "line", "abi"), [
    ("7.3", "cloud-amd64", "7.3", None),
    ("6.12", "cloud-amd64", "6.12", None),
    ("7.3-rt-amd64", "rt-amd64", "7.3", None),
    ("7.2-amd64", "amd64", "7.2", None),
    ("6.1.0-57", "cloud-amd64", None, "6.1.0-57"),
    ("7.3.4+deb13", "cloud-amd64", None, "7.3.4+deb13"),
    ("6.1.0-57-rt-amd64", "rt-amd64", None, "6.1.0-57"),
    ("7.3.4+deb13-amd64", "amd64", None, "7.3.4+deb13"),
    ("linux-image-7.3.4+deb13-cloud-amd64", "cloud-amd64", None, "7.3.4+deb13"),
    ("linux-image-6.1.0-57-rt-amd64", "rt-amd64", None, "6.1.0-57"),
    ("linux-image-7.3.4+deb13-amd64-dbg", "amd64", None, "7.3.4+deb13"),
])
def test_names(name: str, flavour: str, line: str | None, abi: str | None) -> None:
    req = parse_name(name)
    assert req is not None and (req.id, req.flavour, req.line, req.abi) == (name, flavour, line, abi)
    if abi:
        spec = req.pinned
        assert spec is not None and spec.release == f"{abi}-{flavour}"
        assert spec.image_pkg == f"linux-image-{abi}-{flavour}"
        assert spec.dbg_pkg == f"{spec.image_pkg}-dbg"
    else:
        assert req.pinned is None


@pytest.mark.parametrize("name", ["nope", "7", "7.3-arm64", "linux-image-amd64", "6.1.0-57-amd64-unsigned",
                                  "linux-image-7.3.4+deb13-cloud-amd64-unsigned", "7.3.4",
                                  "6.1.170-3", "7.3.4-1~bpo13+1"])
def test_not_names(name: str) -> None:
    assert parse_name(name) is None


def test_lookup_takes_names_outside_the_catalog() -> None:
    cat = Catalog.load()
    assert cat.lookup("6.1") == cat.default
    req = cat.lookup("6.1.0-50")
    assert req.pinned == KernelSpec("6.1.0-50", "6.1.0-50-cloud-amd64", "linux-image-6.1.0-50-cloud-amd64",
                                    "linux-image-6.1.0-50-cloud-amd64-dbg")
    with pytest.raises(UsageError, match="unknown kernel 'nope'"):
        cat.lookup("nope")


def test_line_of() -> None:
    assert [line_of(a) for a in ("6.1.0-57", "6.12.117+deb12", "7.3.4+deb13")] == ["6.1", "6.12", "7.3"]


def test_request_key_is_its_meaning() -> None:
    cat = Catalog.load()
    named = parse_name("7.3-rt-amd64")
    assert named is not None and cat.get("7.3-rt-amd64").key == named.key == "7.3:rt-amd64:newest"
    assert cat.get("6.1-oldest").key == "6.1:cloud-amd64:oldest"
    assert cat.get("6.12").key == "6.12+deb12:cloud-amd64:newest"
