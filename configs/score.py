"""Default `jaxdiv score` config: `jaxdiv score POOL --config configs/score.py [--set key=value ...]`."""

from jaxdiv.score.config import BootstrapConfig, DiversityConfig, ScoreJob


def get_config() -> ScoreJob:
    return ScoreJob(
        diversity=DiversityConfig(block_size=1024, dcscore_temperature=1.0, kmeans_clusters=50),
        bootstrap=BootstrapConfig(samples=20, level=0.95),
    )
