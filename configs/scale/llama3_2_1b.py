"""Llama-3.2-1B shape: `jaxdiv compile` for a TPU pod, on this host (the tpu extra).

    jaxdiv compile --config configs/scale/llama3_2_1b.py                          # v5p:4x4x4
    jaxdiv compile --config configs/scale/llama3_2_1b.py --set topology=v5e:16x16

Every mesh leaves `data` at -1 (the devices the other axes leave), so the same file serves
v5p:4x4x4 (64 chips) and v5e:16x16 (256 chips): the SFT step shards its params 16-way (fsdp)
and 4-way (tensor) on both and data-parallelises over the rest; the classifier (22M params) is
purely data-parallel; generation replicates the batch's weights over 4-way tensor parallelism.
"""

from jaxdiv.aot.config import ClassifierProgram, CompileConfig, DecoderShape, GenerateProgram, SFTProgram
from jaxdiv.sharding import MeshConfig


def get_config() -> CompileConfig:
    return CompileConfig(
        topology="v5p:4x4x4",
        decoder=DecoderShape(name="llama-3.2-1b", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                             num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64, tie_embeddings=True,
                             rope_theta=500000.0),
        classifier=ClassifierProgram(batch_size=1024, max_length=128, mesh=MeshConfig(data=-1)),
        sft=SFTProgram(batch_size=64, max_length=4096, remat=True, mesh=MeshConfig(data=-1, fsdp=16, tensor=4)),
        generate=GenerateProgram(batch_size=256, prompt_length=1024, new_tokens=1024, decode_chunk=16,
                                 mesh=MeshConfig(data=-1, tensor=4)),
    )
