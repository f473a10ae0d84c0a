"""The self-consumption (model-collapse) experiment, sized for a 2-core CPU (~10-15 minutes).

    jaxdiv run configs/self_consume_cpu.py
    jaxdiv run configs/self_consume_cpu.py --set chains.rounds=4 --set workdir=runs/sc4

Three rounds of SmolLM2-135M-Instruct generating TREC questions (the temperature recipe: few-shot
prompts, no topic list to regenerate per generator), each generator fine-tuned (full SFT, a few
dozen short steps of its top layers) on its own accepted rows: `replace` alone, `mix_real` with as many real rows.
Classifiers: MiniLM with its bottom four layers frozen, as in configs/demo.py.
`configs/self_consume_gpu.py` is the larger version for an accelerator.
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
            recipe=RecipeConfig(name="temperature", level=4, few_shot=1),  # temperature 0.9
            sampling=SamplingConfig(top_p=0.95, max_new_tokens=32),
            # bf16 weights, f32 accumulation (XLA's fast CPU path, as in configs/demo.py); prompts: 75-110 tokens
            jax=JaxBackendConfig(batch_buckets=(32,), prompt_buckets=(128,), dtype="bfloat16"),
            chunk_rows=32,
        ),
        score=ScoreConfig(bootstrap=BootstrapConfig(samples=10)),
        train=TrainConfig(
            model=ModelConfig(max_length=32, frozen_layers=4, compute_dtype="bfloat16"),  # TREC: ~15 tokens
            optim=OptimConfig(steps=40, batch_size=16, learning_rate=5e-4, warmup_fraction=0.1,
                              eval_batch_size=64),
            checkpoint=CheckpointConfig(every=0, keep=1),
            log=LogConfig(tensorboard=False),
        ),
        sft=SFTConfig(
            data=SFTDataConfig(chat_template=True),
            # the top 6 of 30 layers train (a CPU step of the whole model is ~3x slower); prompts
            # (system turn + one few-shot example) are 75-110 tokens, questions ~15
            model=LMModelConfig(max_length=128, frozen_layers=24),
            optim=OptimConfig(steps=20, batch_size=4, learning_rate=1e-4, warmup_fraction=0.1,
                              decay="cosine", weight_decay=0.0, eval_batch_size=32),
            checkpoint=CheckpointConfig(every=0, keep=1, async_save=False),
            log=LogConfig(every=4, tensorboard=False),
        ),
        chains=ChainsConfig(rounds=3, chains=("replace", "mix_real"), real_fraction=0.5, pool_rows=96,
                            seeds=(0, 1), sft_eval_rows=32),
        workdir="runs/self_consume_cpu",
        seed=0,
    )
