"""Llama-3-8B shape: `jaxdiv compile` for a TPU pod, on this host (the tpu extra).

    jaxdiv compile --config configs/scale/llama3_8b.py                            # v5p:4x4x4
    jaxdiv compile --config configs/scale/llama3_8b.py --set topology=v5e:16x16

Meshes as configs/scale/llama3_2_1b.py (data = -1 takes what the other axes leave): full SFT
at seq 4096 shards params, gradients and Adam moments (16 bytes a weight) over fsdp=16 x
tensor=4, with per-layer rematerialisation; generation runs bf16 weights over tensor=4 and
data-parallel rows.
"""

from jaxdiv.aot.config import ClassifierProgram, CompileConfig, DecoderShape, GenerateProgram, SFTProgram
from jaxdiv.sharding import MeshConfig


def get_config() -> CompileConfig:
    return CompileConfig(
        topology="v5p:4x4x4",
        decoder=DecoderShape(name="llama-3-8b", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                             num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, tie_embeddings=False,
                             rope_theta=500000.0),
        classifier=ClassifierProgram(batch_size=1024, max_length=128, mesh=MeshConfig(data=-1)),
        sft=SFTProgram(batch_size=64, max_length=4096, remat=True, mesh=MeshConfig(data=-1, fsdp=16, tensor=4)),
        generate=GenerateProgram(batch_size=256, prompt_length=1024, new_tokens=1024, decode_chunk=16,
                                 mesh=MeshConfig(data=-1, tensor=4)),
    )
