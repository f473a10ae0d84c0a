"""The self-consumption (model-collapse) experiment at full size, meant for a GPU.

    jaxdiv run configs/self_consume_gpu.py
    jaxdiv run configs/self_consume_gpu.py --set chains.real_fraction=0.25 --set workdir=runs/sc_gpu_r25

Six rounds of SmolLM2-135M-Instruct writing 1,200 TREC questions per round with the topics
recipe at D3 (each generator writes its own topic list), full fine-tuning of every generator
(bf16 matmuls, float32 master weights) on its own accepted rows, `replace` and `mix_real`
(half the SFT rows real); fully fine-tuned MiniLM classifiers, three seeds per round.
`configs/self_consume_cpu.py` is the 2-core-CPU version.
"""

from jaxdiv.data.tasks import TaskConfig
from jaxdiv.generate.config import GenerateConfig, JaxBackendConfig, RecipeConfig, SamplingConfig
from jaxdiv.score.config import BootstrapConfig, ScoreConfig
from jaxdiv.study.config import ChainsConfig, SelfConsumeConfig
from jaxdiv.train.config import (CheckpointConfig, LMModelConfig, LogConfig, ModelConfig, OptimConfig,
                                 SFTConfig, SFTDataConfig, TrainConfig)


def get_config() -> SelfConsumeConfig:
    return SelfConsumeConfig(
        task=TaskConfig(name="trec"),
        generate=GenerateConfig(
            recipe=RecipeConfig(name="topics", level=3, few_shot=3),  # 100 topics
            sampling=SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=48),
            jax=JaxBackendConfig(batch_buckets=(64, 256), prompt_buckets=(192, 256), dtype="bfloat16"),
            chunk_rows=256,
        ),
        score=ScoreConfig(bootstrap=BootstrapConfig(samples=20)),
        train=TrainConfig(
            model=ModelConfig(max_length=64, frozen_layers=0, compute_dtype="bfloat16"),
            optim=OptimConfig(epochs=10.0, batch_size=32, learning_rate=5e-5, eval_batch_size=512),
            checkpoint=CheckpointConfig(every=500, keep=1),
            log=LogConfig(tensorboard=False),
        ),
        sft=SFTConfig(
            data=SFTDataConfig(chat_template=True),
            model=LMModelConfig(max_length=256, frozen_layers=0, compute_dtype="bfloat16"),
            optim=OptimConfig(epochs=2.0, batch_size=32, learning_rate=2e-5, warmup_fraction=0.05,
                              decay="cosine", weight_decay=0.0, eval_batch_size=64),
            checkpoint=CheckpointConfig(every=100, keep=1),
            log=LogConfig(every=10, tensorboard=False),
        ),
        chains=ChainsConfig(rounds=6, chains=("replace", "mix_real"), real_fraction=0.5, pool_rows=1200,
                            seeds=(0, 1, 2), sft_eval_rows=200),
        workdir="runs/self_consume_gpu",
        seed=0,
    )
