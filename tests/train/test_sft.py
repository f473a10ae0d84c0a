"""Causal-LM SFT on the shared Llama module: response-only masking, the loss against a float64
reference, and a short real run (tiny random-init SmolLM2 architecture, real tokenizer, TREC
questions as prompts and their classes as responses)."""

import json

import jax
import numpy as np
import pytest

from jaxdiv.configlib import apply_overrides
from jaxdiv.train.config import SFTConfig
from jaxdiv.train.data import DataError
from jaxdiv.train.sft import build_lm, encode_pairs, lm_loss, lm_trainable, read_pairs, train_sft

TINY_LM = ["model.pretrained=false", "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4",
           "model.num_kv_heads=2", "model.intermediate_size=128", "model.max_length=48",
           "optim.batch_size=4", "optim.learning_rate=3e-3", "log.progress=false", "checkpoint.every=0",
           "data.chat_template=false"]


@pytest.fixture(scope="module")
def tiny_lm(smollm2_gguf):
    cfg = apply_overrides(SFTConfig(), TINY_LM + [f"model.checkpoint={smollm2_gguf}"])
    spec, tokenizer = build_lm(cfg.model, 0)
    return cfg, spec, tokenizer


@pytest.fixture(scope="module")
def pairs(trec_task):
    rows = trec_task.splits["train"].select(range(64))
    return [{"prompt": f"Question: {t}\nClass:", "response": trec_task.label_names[y]}
            for t, y in zip(rows["text"], rows["label"])]


def test_only_response_tokens_are_targets(tiny_lm):
    cfg, _, tokenizer = tiny_lm
    prompt, response = "What is the capital of France?", "Paris is."
    encoded = encode_pairs(tokenizer, [(prompt, response)], 80, chat_template=True)
    prompt_ids = tokenizer.encode_chat([{"role": "user", "content": prompt}])
    np.testing.assert_array_equal(encoded.input_ids[0, : len(prompt_ids)], prompt_ids)
    targets = encoded.input_ids[0][encoded.loss_mask[0] == 1]
    assert tokenizer.decode(targets[:-1]) == response and targets[-1] == tokenizer.eos_token_ids[0]
    assert encoded.loss_mask[0, : len(prompt_ids)].sum() == 0
    assert encoded.attention_mask[0].sum() == len(prompt_ids) + len(targets)
    system = [{"role": "system", "content": "Be brief."}]
    with_system = encode_pairs(tokenizer, [(prompt, response)], 80, system_prompt="Be brief.")
    system_ids = tokenizer.encode_chat(system + [{"role": "user", "content": prompt}])
    np.testing.assert_array_equal(with_system.input_ids[0, : len(system_ids)], system_ids)
    assert with_system.loss_mask[0, : len(system_ids)].sum() == 0
    np.testing.assert_array_equal(with_system.input_ids[0][with_system.loss_mask[0] == 1], targets)
    with pytest.raises(DataError, match="row 0: the prompt alone"):
        encode_pairs(tokenizer, [(prompt, response)], 8)
    with pytest.raises(DataError, match="row 1 needs non-blank"):
        read_pairs([{"prompt": "a", "response": "b"}, {"prompt": "a", "response": " "}], cfg)


def test_loss_matches_float64_reference(tiny_lm, pairs):
    _, spec, tokenizer = tiny_lm
    encoded = encode_pairs(tokenizer, [(p["prompt"], p["response"]) for p in pairs[:4]], 48, chat_template=False)
    batch = encoded.take(np.arange(4))
    params = {k: np.asarray(v) for k, v in spec.initial.items()}
    loss, aux = jax.jit(lm_loss(spec))(params, batch, None)
    logits = jax.jit(lambda p, b: spec.apply(p)(b["input_ids"], b["attention_mask"]))(params, batch)
    logits = np.asarray(logits, np.float64)[:, :-1]
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    targets = batch["input_ids"][:, 1:]
    weights = batch["loss_mask"][:, 1:]
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    reference = -(picked * weights).sum() / weights.sum()
    assert float(loss) == pytest.approx(reference, abs=1e-5)
    assert float(aux["response_tokens"]) == weights.sum()


def test_sft_run_learns_the_responses(tiny_lm, pairs, smollm2_gguf, tmp_path):
    cfg = apply_overrides(SFTConfig(), TINY_LM + [f"model.checkpoint={smollm2_gguf}", "optim.epochs=3",
                                                     "log.every=3", "mesh.data=2", "mesh.fsdp=2",
                                                     "mesh.tensor=2"])
    result = train_sft(cfg, pairs[:32], pairs[48:], tmp_path, seed=0)
    assert result["steps"] == 24 and result["eval_pairs"] == 16
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert losses[-1] < losses[0] - 2.0  # from ~ln(49152) towards the few class-name tokens
    assert result["eval"]["perplexity"] == pytest.approx(np.exp(result["eval"]["loss"]))
    assert result["eval"]["loss"] < np.log(49152) - 2.0
    assert json.loads((tmp_path / "results.json").read_text())["eval"] == result["eval"]
    # the fine-tuned model saves as an HF checkpoint that loads back with the trained weights
    from jaxdiv.models.checkpoints import load_pretrained, save_hf_checkpoint

    directory = save_hf_checkpoint(result["params"], result["architecture"], result["tokenizer"], tmp_path / "hf")
    reloaded, tokenizer = load_pretrained(directory)
    ids = np.asarray([tokenizer.encode(pairs[0]["prompt"])])
    spec, _ = build_lm(cfg.model, 0)
    np.testing.assert_array_equal(reloaded(ids), spec.apply(result["params"])(ids))


def test_frozen_layers_train_only_the_top_of_the_decoder(tiny_lm):
    from jaxdiv.train.state import _path

    _, spec, _ = tiny_lm
    assert spec.trainable_keys == set(spec.initial)  # frozen_layers=0: everything trains
    trainable = lm_trainable(1)
    frozen = {k for k in spec.initial if not trainable(_path(k))}
    assert frozen == {"embed_tokens/embedding"} | {k for k in spec.initial if k.startswith("layers/0/")}
    assert trainable(_path("norm/scale")) and trainable(_path("layers/1/mlp/up_proj/kernel"))


def test_jaxdiv_train_sft_with_lora_writes_the_merged_model_and_the_peft_adapter(pairs, smollm2_gguf, tmp_path):
    """`jaxdiv train` of an SFT config with LoRA: model/ (adapters merged in) and adapter/ (PEFT)
    both give back the trained model's logits."""
    from flax import nnx

    from jaxdiv.cli import main
    from jaxdiv.models import checkpoints, lora, peft

    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(json.dumps(p) + "\n" for p in pairs[:16]))
    overrides = TINY_LM + [f"model.checkpoint={smollm2_gguf}", "model.lora.rank=4", "optim.steps=3",
                           "data.eval_fraction=0", "optim.learning_rate=3e-2"]
    argv = ["train", "--config", "configs/sft_smollm2.py", "--train-rows", str(rows),
            "--workdir", str(tmp_path / "run")] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 0
    cfg = apply_overrides(SFTConfig(), overrides)
    spec, tokenizer = build_lm(cfg.model, 0)
    trained = json.loads((tmp_path / "run" / "results.json").read_text())
    assert trained["steps"] == 3
    ids = np.asarray([tokenizer.encode(pairs[0]["prompt"])])
    merged, _ = checkpoints.load_pretrained(tmp_path / "run" / "model")
    base = spec.apply(spec.initial)  # the run's own init (seed 0): the adapters start as the identity
    for path, layer in lora.adapters(base):
        assert not np.any(np.asarray(layer.lora_b[...]))
    adapted = peft.load_peft_adapter(tmp_path / "run" / "adapter", lora.merge_lora(base), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(merged(ids), adapted(ids), atol=1e-5)
    assert not np.allclose(merged(ids), base(ids), atol=1e-3)  # training moved the adapters
