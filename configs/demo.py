"""The demo study: TREC, SmolLM2-generated pools at three diversity levels, MiniLM classifiers.

    jaxdiv run configs/demo.py
    jaxdiv run configs/demo.py --set grid.seeds=0,1,2 --set workdir=runs/demo3

A demonstration of the pipeline, not a test of the claim: it is sized for a 2-core CPU (target:
first run under 15 minutes, a cached re-run under 1 minute), so it has one generation seed and one
real subset (no generation or subset variance enters any interval), two training seeds (fewer
than the 3 paired replicates a comparison needs: the report says "not testable"), the
fixed_total protocol only, two small label budgets, synthetic proportions up to one half, small
pools (one per level and budget; every level's cells draw on the same number of synthetic rows
per class: equal n), and partial fine-tuning (the top two encoder layers and the head) in bf16.
`configs/study_full.py` is the full-size study for accelerators.
"""

from jaxdiv.data.tasks import TaskConfig
from jaxdiv.generate.config import GenerateConfig, JaxBackendConfig, RecipeConfig, SamplingConfig
from jaxdiv.mix.config import MixConfig
from jaxdiv.score.config import BootstrapConfig, ScoreConfig
from jaxdiv.study.config import GridConfig, StudyConfig
from jaxdiv.train.config import CheckpointConfig, LogConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> StudyConfig:
    return StudyConfig(
        task=TaskConfig(name="trec"),
        generate=GenerateConfig(
            # Topic sets grow with the level; the demo caps D6 at 100 LLM-written topics.
            recipe=RecipeConfig(name="topics", topic_counts=(1, 3, 8, 20, 40, 70, 100), few_shot=3),
            sampling=SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=32),
            # bf16 weights with f32 accumulation: XLA's CPU matmuls run bf16 at several times the
            # f32 rate (AMX / AVX512-BF16). Prompts are ~100-150 tokens.
            jax=JaxBackendConfig(batch_buckets=(8, 32), prompt_buckets=(160, 256), dtype="bfloat16"),
            chunk_rows=32,
        ),
        score=ScoreConfig(bootstrap=BootstrapConfig(samples=10)),
        mix=MixConfig(allow_short_classes=False),  # equal n: every cell holds exactly what it asks
        train=TrainConfig(
            # bf16 matmuls (f32 params and accumulation): XLA's fast CPU path. 32 tokens hold 99%
            # of TREC questions and every 32-token completion.
            model=ModelConfig(max_length=32, frozen_layers=4, compute_dtype="bfloat16"),
            optim=OptimConfig(steps=60, batch_size=16, learning_rate=5e-4, warmup_fraction=0.1,
                              eval_batch_size=64),  # 28 vmapped runs evaluate each batch at once
            checkpoint=CheckpointConfig(every=0, keep=1),
            log=LogConfig(tensorboard=False, progress=True),
        ),
        # 3 levels x 2 budgets = 6 pools, each first planned at 96 rows and extended while a class
        # has fewer accepted rows than its cells use (b/2 per class at proportion 0.5), up to 480 rows.
        # (Proportion 1 would double the rows to generate: about 5 more minutes on 2 cores.)
        grid=GridConfig(levels=(0, 3, 6), proportions=(0.0, 0.25, 0.5), budgets=(8, 16), subsets=(0,),
                        generation_seeds=(0,), protocols=("fixed_total",), seeds=(0, 1), pool_rows=96,
                        max_pool_rows=480),
        train_group_size=32,  # every cell in one vmapped program: one compile, one feature table
        workdir="runs/demo",
    )
