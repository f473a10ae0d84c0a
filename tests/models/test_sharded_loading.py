"""Loading HF safetensors checkpoints straight onto an 8-device mesh (conftest forces eight host
devices): each device reads only its own block of each tensor, and the result is transformers'
model, param for param and logit for logit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.models import checkpoints
from jaxdiv.sharding import MeshConfig, make_mesh, named_sharding

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# every sharded size divides by its mesh axis: embed 64 by fsdp=4; mlp 96, heads 64, kv_heads 32
# and vocab 128 by tensor=2
SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5)
MESH = MeshConfig(data=1, fsdp=4, tensor=2)


def _reference(model_type: str, seed: int = 0):
    """A random transformers Llama (untied LM head) or Qwen2 (tied, q/k/v biases made non-zero)."""
    torch.manual_seed(seed)
    if model_type == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE, tie_word_embeddings=False)).eval()
    ref = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SHAPE, tie_word_embeddings=True)).eval()
    with torch.no_grad():  # biases init to zero: make them matter
        for layer in ref.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return ref


def _load(directory, param_dtype=jnp.float32):
    cfg, weights = checkpoints.read_safetensors_weights(directory)
    return checkpoints.from_hf_weights(cfg, weights, param_dtype=param_dtype, mesh=make_mesh(MESH),
                                       rules=MESH.logical_axis_rules, source=str(directory))


def _params(model) -> dict[str, tuple[np.ndarray, jax.Array, tuple]]:
    """{HF key: (value in the HF layout, array, logical axes)} of a loaded model's params."""
    params = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key, transposed = checkpoints._hf_key(path)
        array = variable.get_value()
        params[key] = (np.asarray(array).T if transposed else np.asarray(array), array,
                       variable.get_metadata().get("out_sharding"))
    return params


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_checkpoint_loads_onto_the_mesh_block_by_block(tmp_path, model_type, monkeypatch):
    """Every param lands with its rules' sharding, each device having read only its block, and
    the model is transformers' own: same tensors, same logits. The Llama is saved in several
    files with a model.safetensors.index.json, as big checkpoints are."""
    ref = _reference(model_type)
    ref.save_pretrained(tmp_path, max_shard_size="40KB" if model_type == "llama" else "1GB")
    assert (tmp_path / checkpoints.SAFETENSORS_INDEX).is_file() == (model_type == "llama")
    reads = []
    read_block = checkpoints.StoredTensor.__getitem__
    monkeypatch.setattr(checkpoints.StoredTensor, "__getitem__",
                        lambda self, index: reads.append((self.key, index)) or read_block(self, index))

    model = _load(tmp_path)
    mesh, state = make_mesh(MESH), ref.state_dict()
    params = _params(model)
    assert set(params) == set(state) - ({"lm_head.weight"} if model_type == "qwen2" else set())
    for key, (value, array, axes) in params.items():
        assert array.sharding == named_sharding(mesh, axes, MESH.logical_axis_rules), key
        np.testing.assert_array_equal(value, state[key].numpy(), err_msg=key)
    gate = params["model.layers.0.mlp.gate_proj.weight"][1]
    assert gate.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    # the (96, 64) HF gate_proj weight: eight (48, 16) blocks, never the whole tensor
    gate_reads = [index for key, index in reads if key == "model.layers.0.mlp.gate_proj.weight"]
    assert len(gate_reads) == 8
    assert {tuple(s.stop - s.start for s in index) for index in gate_reads} == {(48, 16)}

    ids = np.random.default_rng(0).integers(0, SHAPE["vocab_size"], (2, 7))
    with torch.no_grad():
        expected = ref(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("stored, param_dtype", [(torch.bfloat16, jnp.float32), (torch.bfloat16, jnp.bfloat16),
                                                 (torch.float16, jnp.bfloat16), (torch.float32, jnp.bfloat16)],
                         ids=["bf16-as-f32", "bf16-as-bf16", "f16-as-bf16", "f32-as-bf16"])
def test_stored_dtype_is_cast_to_the_param_dtype_block_by_block(tmp_path, stored, param_dtype):
    """bf16 / f16 checkpoints (how most are published) load as f32 or bf16 params, rounded as
    torch rounds."""
    ref = _reference("qwen2").to(stored)
    ref.save_pretrained(tmp_path)
    torch_dtype = {jnp.float32: torch.float32, jnp.bfloat16: torch.bfloat16}[param_dtype]
    for key, (value, array, _) in _params(_load(tmp_path, param_dtype)).items():
        assert array.dtype == param_dtype, key
        expected = ref.state_dict()[key].to(torch_dtype).float().numpy()
        np.testing.assert_array_equal(value.astype(np.float32), expected, err_msg=key)


def test_missing_misshapen_and_misindexed_tensors_raise_checkpoint_errors(tmp_path):
    from safetensors.numpy import save_file

    ref = _reference("qwen2")
    ref.save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    state = {k: v.numpy() for k, v in ref.state_dict().items() if k != "lm_head.weight"}

    save_file({k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}, str(file))
    with pytest.raises(checkpoints.CheckpointError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        _load(tmp_path)

    save_file({**state, "model.layers.1.mlp.up_proj.weight": np.zeros((96, 32), np.float32)}, str(file))
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has shape \(96, 32\), "
                             r"the model expects \(96, 64\)"):
        _load(tmp_path)

    save_file({**state, "model.layers.9.mlp.up_proj.weight": np.zeros((96, 64), np.float32)}, str(file))
    with pytest.raises(checkpoints.CheckpointError, match="not used by the Llama architecture.*layers.9"):
        _load(tmp_path)

    save_file(state, str(file))
    index = {"metadata": {}, "weight_map": {k: "model-00002-of-00002.safetensors" for k in state}}
    (tmp_path / checkpoints.SAFETENSORS_INDEX).write_text(json.dumps(index))
    with pytest.raises(checkpoints.CheckpointError, match="names model-00002-of-00002.safetensors, which does not exist"):
        _load(tmp_path)
    index["weight_map"] = {k: "model.safetensors" for k in state} | {"model.extra.weight": "model.safetensors"}
    (tmp_path / checkpoints.SAFETENSORS_INDEX).write_text(json.dumps(index))
    with pytest.raises(checkpoints.CheckpointError, match=r"tensors not in the file it names: \['model.extra.weight'\]"):
        _load(tmp_path)
