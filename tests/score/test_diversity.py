"""The embedding-diversity kernel against float64 numpy, vendi-score, and the diversity package."""

import math

import jax
import numpy as np
import pytest

from jaxdiv.score.config import DiversityConfig
from jaxdiv.score.diversity import embedding_diversity, vendi_scores
from jaxdiv.score.errors import EmbeddingError
from jaxdiv.score.streaming import streaming_embedding_diversity
from jaxdiv.sharding import make_mesh

from .peers import diversity_module

CFG = DiversityConfig(block_size=64, dcscore_temperature=0.5, near_duplicate_threshold=0.6)
# n > d (dual route), n < d (n x n route), both with padding to the 8-device block layout.
SHAPES = [(300, 24), (20, 64)]


def reference(x: np.ndarray, cfg: DiversityConfig) -> dict[str, float]:
    """Straightforward float64 definitions on the full n x n matrix."""
    x = x.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = x.shape[0]
    k = x @ x.T
    lam = np.linalg.eigvalsh(k / n)
    lam = lam[lam > 1e-12]
    out = {"vendi_q1": math.exp(-np.sum(lam * np.log(lam))),
           "vendi_q0.5": math.exp(np.log(np.sum(lam ** 0.5)) / 0.5),
           "vendi_q2": math.exp(-np.log(np.sum(lam ** 2))),
           "vendi_qinf": 1.0 / lam.max(),
           "log_det": float(np.sum(np.log1p(lam / cfg.logdet_ridge)))}
    sigma = np.sqrt(lam) / np.sum(np.sqrt(lam))
    out["effective_rank"] = math.exp(-np.sum(sigma * np.log(sigma)))
    off = ~np.eye(n, dtype=bool)
    out["mean_cosine_distance"] = 1.0 - k[off].mean()
    nearest = np.where(off, k, -np.inf).max(axis=1)
    out["chamfer_distance"] = np.mean(1.0 - nearest)
    out["near_duplicate_rate"] = np.mean(nearest >= cfg.near_duplicate_threshold)
    logits = k / cfg.dcscore_temperature
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    out["dcscore"] = np.trace(softmax / softmax.sum(axis=1, keepdims=True))
    return out


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"n{s[0]}_d{s[1]}")
def scored(request):
    n, d = request.param
    x = np.random.default_rng(n * d).normal(size=(n, d)).astype(np.float32)
    x[1] = x[0] * 3.0  # one exact near duplicate pair (same direction)
    one = embedding_diversity(x, CFG, mesh=make_mesh(devices=jax.devices()[:1]))
    eight = embedding_diversity(x, CFG)
    return x, one, eight


def test_eight_devices_in_use():
    assert len(jax.devices()) == 8


def test_matches_float64_reference(scored):
    x, _, eight = scored
    for name, value in reference(x, CFG).items():
        assert eight[name] == pytest.approx(value, rel=2e-5, abs=1e-6), name


def test_one_device_equals_eight_devices(scored):
    _, one, eight = scored
    for name in one:
        assert one[name] == pytest.approx(eight[name], rel=1e-5, abs=1e-6), name


def test_vendi_equals_vendi_score_package(scored):
    from vendi_score import vendi

    x, _, eight = scored
    x64 = x.astype(np.float64)
    xn = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    assert eight["vendi_q1"] == pytest.approx(vendi.score_dual(x64), rel=1e-5)
    assert eight["vendi_q1"] == pytest.approx(vendi.score_K(xn @ xn.T), rel=1e-5)
    for q in (0.5, 2, "inf"):
        assert eight[f"vendi_q{q}"] == pytest.approx(vendi.score_K(xn @ xn.T, q=q), rel=1e-5)
    spectrum_only = vendi_scores(x, CFG)
    already_unit = vendi_scores(xn.astype(np.float32), CFG)  # takes the no-scaling branch
    for name, value in spectrum_only.items():
        assert value == pytest.approx(eight[name], rel=1e-6), name
        assert already_unit[name] == pytest.approx(eight[name], rel=1e-5), name


def test_vendi_does_not_depend_on_route():
    x = np.random.default_rng(1).normal(size=(20, 64)).astype(np.float32)
    x[5:10] = x[0]  # rank deficiency: the dual has many zero eigenvalues, q = 0.5 sees their noise
    mesh = make_mesh(devices=jax.devices()[:1])
    gram = embedding_diversity(x, DiversityConfig(block_size=64, vendi_route="gram"), mesh=mesh)
    dual = embedding_diversity(x, DiversityConfig(block_size=64, vendi_route="dual"), mesh=mesh)
    for name in ("vendi_q0.5", "vendi_q1", "vendi_q2", "vendi_qinf", "log_det", "effective_rank"):
        assert gram[name] == pytest.approx(dual[name], rel=1e-5), name


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(2)
    centers = np.eye(16)[:4] * 10.0
    x = np.repeat(centers, 50, axis=0) + rng.normal(scale=0.3, size=(200, 16))
    out = embedding_diversity(x, DiversityConfig(block_size=64, kmeans_clusters=4))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    groups = xn.reshape(4, 50, 16)
    inertia = np.mean(np.sum((groups - groups.mean(axis=1, keepdims=True)) ** 2, axis=2))
    assert out["kmeans_occupancy_entropy"] == pytest.approx(math.log(4), rel=1e-6)
    assert out["kmeans_inertia"] == pytest.approx(inertia, rel=1e-4)


def test_identical_rows_are_minimally_diverse():
    x = np.tile(np.random.default_rng(3).normal(size=(1, 24)), (300, 1))
    out = embedding_diversity(x, CFG)
    for name in ("vendi_q0.5", "vendi_q1", "vendi_q2", "vendi_qinf", "effective_rank", "dcscore"):
        assert out[name] == pytest.approx(1.0, abs=1e-5), name
    for name in ("mean_cosine_distance", "chamfer_distance", "kmeans_inertia", "kmeans_occupancy_entropy"):
        assert out[name] == pytest.approx(0.0, abs=1e-5), name
    assert out["near_duplicate_rate"] == 1.0


def test_one_dimension_is_defined():
    x = np.array([[1.0], [2.0], [-0.5], [3.0]] * 5)  # directions: +1 (15 rows), -1 (5 rows)
    out = embedding_diversity(x, DiversityConfig(block_size=64, kmeans_clusters=2))
    assert all(np.isfinite(v) for v in out.values())
    assert out["vendi_q1"] == pytest.approx(1.0)
    assert out["chamfer_distance"] == pytest.approx(0.0, abs=1e-6)
    # mean off-diagonal cosine: (15*14 + 5*4 - 2*15*5) / (20*19)
    assert out["mean_cosine_distance"] == pytest.approx(1 - 80 / 380, rel=1e-6)
    assert out["kmeans_occupancy_entropy"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


@pytest.mark.parametrize("bad, message", [
    (np.ones((1, 4)), "at least 2 rows"),
    (np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]]), "row 1 is the zero vector"),
    (np.array([[1.0, 2.0], [3.0, 1.0], [np.nan, 1.0]]), "row 2 contains NaN or Inf"),
    (np.array([[1.0, np.inf], [3.0, 1.0]]), "row 0 contains NaN or Inf"),
    (np.ones(5), r"expected an \(n, d\) matrix"),
])
def test_bad_input_is_a_clear_error(bad, message):
    with pytest.raises(EmbeddingError, match=message):
        embedding_diversity(bad, CFG)


def test_streaming_from_disk_equals_in_memory(tmp_path, scored):
    x, one, _ = scored
    np.save(tmp_path / "x.npy", x)
    streamed = streaming_embedding_diversity(tmp_path / "x.npy", CFG, chunk_rows=64, progress=False)
    for name in one:
        if name.startswith("kmeans"):
            continue  # seeded on a sample, so a different (equally valid) local optimum
        assert streamed[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), name
    assert streamed["kmeans_inertia"] == pytest.approx(one["kmeans_inertia"], rel=0.2, abs=1e-6)


def test_streaming_names_the_bad_row(tmp_path):
    x = np.random.default_rng(4).normal(size=(100, 8)).astype(np.float32)
    x[77] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(EmbeddingError, match="row 77 contains NaN"):
        streaming_embedding_diversity(tmp_path / "x.npy", CFG, chunk_rows=32, progress=False)


@pytest.mark.torch
def test_relation_to_diversity_package_remote_clique_and_chamfer(minilm_dir):
    """`diversity` averages the n x n distance matrix *with* its zero diagonal: theirs = ours (n-1)/n."""
    pytest.importorskip("torch")
    from sentence_transformers import SentenceTransformer

    embedding = diversity_module("embedding")
    texts = ["How far is the moon?", "Who wrote Hamlet?", "What is the capital of Peru?",
             "How far away is the moon?", "Name a large river in Africa.", "Why is the sky blue?"]
    x = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts)
    ours = embedding_diversity(x, CFG)
    n = len(texts)
    clique = embedding.remote_clique(texts, model=str(minilm_dir), verbose=False)
    assert clique == pytest.approx(round(ours["mean_cosine_distance"] * (n - 1) / n, 3), abs=1e-3)
    chamfer = embedding.chamfer_dist(texts, model=str(minilm_dir), verbose=False)
    assert chamfer == pytest.approx(round(ours["chamfer_distance"], 3), abs=1e-3)
