"""Fine-tune all-MiniLM-L6-v2 on TREC coarse question classification (6 classes).

    jaxdiv train --config configs/train_trec.py
    jaxdiv train --config configs/train_trec.py --set optim.steps=50 --set mesh.fsdp=2
"""

from jaxdiv.data.tasks import TaskConfig
from jaxdiv.sharding import MeshConfig
from jaxdiv.train.config import CheckpointConfig, ModelConfig, OptimConfig, TrainJobConfig


def get_config() -> TrainJobConfig:
    return TrainJobConfig(
        task=TaskConfig(name="trec"),
        model=ModelConfig(asset="minilm-l6-v2", max_length=64, frozen_layers=0),
        optim=OptimConfig(epochs=3.0, batch_size=32, learning_rate=5e-5, warmup_fraction=0.1,
                          decay="linear", eval_every=200),
        mesh=MeshConfig(data=-1),
        checkpoint=CheckpointConfig(every=200, keep=2),
        workdir="runs/train_trec",
        seed=0,
    )
