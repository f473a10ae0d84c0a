"""JAX fine-tune vs its PyTorch twin: all-MiniLM-L6-v2 on 1,024 TREC rows, 96 steps.

    jaxdiv compare --config configs/compare_trec.py
    jaxdiv compare --config configs/compare_trec.py --train-rows runs/demo/mixture.parquet

Dropout is off (the frameworks cannot draw the same masks); everything else is the
training stage's defaults: AdamW 5e-5, 10% warmup then linear decay, clipping at 1.0.
"""

from jaxdiv.compare.config import CompareJobConfig, ParityConfig
from jaxdiv.data.tasks import TaskConfig
from jaxdiv.sharding import MeshConfig
from jaxdiv.train.config import ModelConfig, OptimConfig, TrainJobConfig


def get_config() -> CompareJobConfig:
    return CompareJobConfig(
        train=TrainJobConfig(
            task=TaskConfig(name="trec"),
            model=ModelConfig(asset="minilm-l6-v2", max_length=64, dropout=False),
            optim=OptimConfig(steps=96, batch_size=32, learning_rate=5e-5, warmup_fraction=0.1,
                              decay="linear", eval_batch_size=100),
            mesh=MeshConfig(data=-1),
            seed=0,
        ),
        parity=ParityConfig(train_rows=1024, test_rows=0, logits_tolerance=1e-4, loss_tolerance=1e-3),
        workdir="runs/compare_trec",
    )
