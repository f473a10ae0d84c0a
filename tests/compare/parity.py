"""The tiny comparison shared by the parity tests and `make_reference.py`: MiniLM's real
weights, 64 TREC rows, batch 8, sequence 32, 6 AdamW steps with warmup (one warmup step),
clipping and linear decay, evaluated on 48 test rows (on the 8 forced host devices in tests)."""

from jaxdiv.compare.config import CompareJobConfig, ParityConfig
from jaxdiv.sharding import MeshConfig
from jaxdiv.train.config import ModelConfig, OptimConfig, TrainJobConfig

STEPS = 6


def tiny_config(workdir) -> CompareJobConfig:
    return CompareJobConfig(
        train=TrainJobConfig(
            model=ModelConfig(max_length=32, dropout=False),
            # A learning rate high enough that the loss moves visibly in 6 steps.
            optim=OptimConfig(steps=STEPS, batch_size=8, learning_rate=5e-4, warmup_fraction=0.2,
                              eval_batch_size=32),
            mesh=MeshConfig(data=-1), seed=3),
        parity=ParityConfig(train_rows=64, test_rows=48, logits_tolerance=1e-4, loss_tolerance=1e-4),
        workdir=str(workdir))
