"""A tiny decoder and encoder for `jaxdiv compile` on a small topology (v5e:2x2, the test's).

    jaxdiv compile --config configs/scale/tiny.py --set report=

Small enough to compile in seconds; `--set decoder.vocab_size=...` etc. grow it past a chip.
"""

from jaxdiv.aot.config import ClassifierProgram, CompileConfig, DecoderShape, GenerateProgram, SFTProgram
from jaxdiv.sharding import MeshConfig


def get_config() -> CompileConfig:
    return CompileConfig(
        topology="v5e:2x2",
        decoder=DecoderShape(name="tiny", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=16, tie_embeddings=True),
        classifier=ClassifierProgram(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                                     intermediate_size=128, batch_size=8, max_length=32, mesh=MeshConfig(data=-1)),
        sft=SFTProgram(batch_size=8, max_length=64, mesh=MeshConfig(data=-1, fsdp=2, tensor=2)),
        generate=GenerateProgram(batch_size=8, prompt_length=16, new_tokens=16, decode_chunk=4,
                                 mesh=MeshConfig(data=-1, tensor=2)),
        report="",
    )
