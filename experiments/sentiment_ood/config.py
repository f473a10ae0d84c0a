"""Study B's in- vs out-of-distribution split: train on VADER movie-review snippets (real + synthetic at
three diversity levels), test on movie (ID) and on Amazon reviews, NYT editorials and tweets (OOD).
Does quality (label fidelity) drive ID accuracy and diversity drive OOD accuracy?

    jaxdiv run experiments/sentiment_ood/config.py        # writes into experiments/sentiment_ood/

Grid: prompt mechanism at D0, D3, D6; budgets of 8 and 32 real rows per class, two real subsets;
the added protocol (the budget plus as many synthetic rows); 2 generation seeds, 5 training seeds.
Ratings with |mean| < 0.5 are dropped as neutral (task.neutral_margin) in every domain. Sized for
the 2-core CPU (see experiments/README.md for the runtime).
"""

from jaxdiv.data.tasks import TaskConfig
from jaxdiv.generate.config import GenerateConfig, JaxBackendConfig, RecipeConfig, SamplingConfig
from jaxdiv.mix.config import MixConfig
from jaxdiv.report.config import ReportConfig
from jaxdiv.score.config import BootstrapConfig, ScoreConfig
from jaxdiv.study.config import GridConfig, StudyConfig
from jaxdiv.train.config import CheckpointConfig, LogConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> StudyConfig:
    return StudyConfig(
        task=TaskConfig(name="sentiment_movie", neutral_margin=0.5),
        test_domains=("sentiment_movie", "sentiment_amazon", "sentiment_nyt", "sentiment_tweets"),
        generate=GenerateConfig(
            recipe=RecipeConfig(name="topics", topic_counts=(1, 5, 20, 100, 250, 500, 1000), few_shot=3),
            sampling=SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=64),
            jax=JaxBackendConfig(batch_buckets=(8, 32), prompt_buckets=(256, 384), dtype="bfloat16"),
            chunk_rows=32,
        ),
        score=ScoreConfig(bootstrap=BootstrapConfig(samples=10)),
        mix=MixConfig(allow_short_classes=False),
        train=TrainConfig(
            # 64 tokens hold most snippets and tweets; the four test splits (3,882 rows) are
            # evaluated for every cell
            model=ModelConfig(max_length=64, frozen_layers=4, compute_dtype="bfloat16"),
            optim=OptimConfig(steps=60, batch_size=16, learning_rate=5e-4, warmup_fraction=0.1, eval_batch_size=64),
            checkpoint=CheckpointConfig(every=0, keep=1),
            log=LogConfig(tensorboard=False, progress=True),
        ),
        grid=GridConfig(
            mechanisms=("prompt",), levels=(0, 3, 6), proportions=(0.0, 1.0), budgets=(8, 32), subsets=(0, 1),
            generation_seeds=(0, 1), protocols=("added",), seeds=(0, 1, 2, 3, 4),
            pool_rows=96, max_pool_rows=480, short_pools="shrink",
        ),
        report=ReportConfig(diversity_metric="vendi_q1", shift_metric="mmd2", shift_tolerance=0.02,
                            quality_metric="label_fidelity", resamples=2000, seed=0, sample_rows=10),
        train_group_size=32,
        workdir="experiments/sentiment_ood",
    )
