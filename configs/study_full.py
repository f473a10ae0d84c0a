"""The full-size study, meant for a GPU or TPU: every level D0-D6, six proportions, four label
budgets, three seeds, full fine-tuning of MiniLM on TREC.

    jaxdiv run configs/study_full.py
    jaxdiv run configs/study_full.py --set grid.protocols=added --set workdir=runs/full_added

On a pod, set the mesh (e.g. --set train.mesh.fsdp=4) and swap the generator for a served
model (--set generate.backend=openai --set generate.openai.model=...).
"""

from jaxdiv.data.tasks import TaskConfig
from jaxdiv.generate.config import GenerateConfig, JaxBackendConfig, RecipeConfig, SamplingConfig
from jaxdiv.mix.config import MixConfig
from jaxdiv.score.config import BootstrapConfig, ScoreConfig
from jaxdiv.study.config import GridConfig, StudyConfig
from jaxdiv.train.config import CheckpointConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> StudyConfig:
    return StudyConfig(
        task=TaskConfig(name="trec"),
        generate=GenerateConfig(
            recipe=RecipeConfig(name="topics", few_shot=3),  # 1 .. 10,000 topics at D0..D6
            sampling=SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=64),
            jax=JaxBackendConfig(batch_buckets=(64, 256), prompt_buckets=(256, 512), dtype="bfloat16"),
            chunk_rows=256,
        ),
        score=ScoreConfig(bootstrap=BootstrapConfig(samples=20)),
        # TREC has 60 ABBR training questions: the 200 budget takes all of them (recorded per cell).
        mix=MixConfig(allow_short_classes=True),
        train=TrainConfig(
            model=ModelConfig(max_length=64, frozen_layers=0, compute_dtype="bfloat16"),
            optim=OptimConfig(epochs=10.0, batch_size=32, learning_rate=5e-5, eval_batch_size=512),
            checkpoint=CheckpointConfig(every=500, keep=2),
        ),
        grid=GridConfig(levels=(0, 1, 2, 3, 4, 5, 6), proportions=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
                        budgets=(10, 50, 200, 0), seeds=(0, 1, 2), pool_rows=3000, max_pool_rows=12000,
                        # budget 0 (all labels) at proportion 1 asks a class's whole training split in
                        # synthetic rows; where a pool falls short, every level takes the smallest count
                        short_pools="shrink"),
        train_group_size=16,
        workdir="runs/study_full",
    )
