"""Supervised fine-tuning of SmolLM2-135M-Instruct on (prompt, response) rows.

    jaxdiv train --config configs/sft_smollm2.py --train-rows pairs.jsonl
    jaxdiv train --config configs/sft_smollm2.py --set data.path=pairs.jsonl --set optim.steps=200

Rows need `prompt` and `response` columns (see data.prompt_column / data.response_column).
"""

from jaxdiv.sharding import MeshConfig
from jaxdiv.train.config import CheckpointConfig, LMModelConfig, OptimConfig, SFTDataConfig, SFTJobConfig


def get_config() -> SFTJobConfig:
    return SFTJobConfig(
        data=SFTDataConfig(eval_fraction=0.1, chat_template=True),
        model=LMModelConfig(checkpoint="smollm2-135m-instruct", max_length=256),
        optim=OptimConfig(epochs=2.0, batch_size=16, learning_rate=2e-5, warmup_fraction=0.05,
                          decay="cosine", weight_decay=0.0, eval_every=100),
        mesh=MeshConfig(data=-1),
        checkpoint=CheckpointConfig(every=100, keep=2),
        workdir="runs/sft_smollm2",
        seed=0,
    )
