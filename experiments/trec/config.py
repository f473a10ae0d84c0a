"""Study A on TREC: does moderately diverse synthetic data help where labels are scarce, and does
highly diverse data hurt, when the shift to the real data is small?

    jaxdiv run experiments/trec/config.py        # writes into experiments/trec/

Grid: the prompt mechanism at D0..D6 (topic sets of 1 .. 1,000 LLM-written topics) and the
selection mechanism (three subsets of one D6 pool, selected to low, middle and high diversity at
equal n) as a second diversity axis; budgets of 4, 8 and 16 real rows per class; both protocols
(fixed_total: half of the budget replaced by synthetic rows; added: the budget plus half as many
synthetic rows); 2 generation seeds (independent pools) and 5 training seeds. Sized for the 2-core
CPU (see experiments/README.md for the runtime).
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
        task=TaskConfig(name="trec"),
        generate=GenerateConfig(
            # D6 draws from 1,000 topics (the paper goes to 10k; 1,000 LLM-written topics take a few
            # minutes with SmolLM2 on the CPU and are cached under $JAXDIV_CACHE/topics).
            recipe=RecipeConfig(name="topics", topic_counts=(1, 5, 20, 100, 250, 500, 1000), few_shot=3),
            sampling=SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=32),
            jax=JaxBackendConfig(batch_buckets=(8, 32), prompt_buckets=(160, 256), dtype="bfloat16"),
            chunk_rows=32,
        ),
        score=ScoreConfig(bootstrap=BootstrapConfig(samples=10)),
        mix=MixConfig(allow_short_classes=False),
        train=TrainConfig(
            model=ModelConfig(max_length=32, frozen_layers=4, compute_dtype="bfloat16"),
            optim=OptimConfig(steps=60, batch_size=16, learning_rate=5e-4, warmup_fraction=0.1, eval_batch_size=64),
            checkpoint=CheckpointConfig(every=0, keep=1),
            log=LogConfig(tensorboard=False, progress=True),
        ),
        grid=GridConfig(
            mechanisms=("prompt", "select"), levels=(0, 1, 2, 3, 4, 5, 6),
            select_level=6, select_pool_rows=240, select_positions=(0.0, 0.5, 1.0),
            proportions=(0.0, 0.5), budgets=(4, 8, 16), subsets=(0,), generation_seeds=(0, 1),
            protocols=("fixed_total", "added"), seeds=(0, 1, 2, 3, 4),
            # budget 16 at proportion 0.5 needs 8 accepted rows per class. The budget-trained label
            # probe keeps few DESC and HUM questions (3-5% of generated rows each), so pools start at
            # 96 rows (240 for the D6 pool selection draws on) and are extended up to 240 while a
            # class is short; past that every level of the replicate uses what its shortest pool
            # holds per class (equal n; recorded in the `fallback` column and the report)
            pool_rows=96, max_pool_rows=240, short_pools="shrink",
        ),
        report=ReportConfig(diversity_metric="vendi_q1", shift_metric="mmd2", shift_tolerance=0.02,
                            resamples=2000, seed=0, sample_rows=10),
        train_group_size=32,
        workdir="experiments/trec",
    )
