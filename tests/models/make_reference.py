"""Regenerate tests/models/fixtures/smollm2_reference.npz from transformers (needs torch).

    python tests/models/make_reference.py

Stores, for the GGUF SmolLM2: transformers' tokenizer ids for a few strings, and its
float32 logits for one chat prompt at a fixed subset of vocabulary ids (the fixture must
stay small), so the default test run checks fixed numbers without torch.
"""

import json
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "smollm2_reference.npz"
TOKENIZER_STRINGS = (
    "What is the capital of France?",
    "In 1969, 3 astronauts flew 384,400 km -- to the Moon!",
    "  leading spaces, tabs\tand\nnewlines; émojis 🙂 and ünïcödé.",
    "<|im_start|>user\nHi<|im_end|>\n",
    "def f(x):\n    return x**2  # 12345",
)
CHAT = [{"role": "user", "content": "Write one question about the ocean."}]
VOCAB_SUBSET = 512


def reference_model(gguf_path: Path):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return model.eval(), tokenizer


def chat_ids(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def main() -> None:
    import torch

    from jaxdiv import assets

    gguf_path = assets.resolve("smollm2-135m-instruct") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tokenizer = reference_model(gguf_path)
    ids = chat_ids(tokenizer, CHAT)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    top = np.argsort(-logits, axis=-1)[:, :8].ravel()
    rng = np.random.default_rng(0)
    vocab = np.unique(np.concatenate([top, rng.choice(logits.shape[-1], VOCAB_SUBSET, replace=False)]))
    tokenized = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in TOKENIZER_STRINGS]
    np.savez_compressed(
        FIXTURE, chat_ids=np.asarray(ids, np.int32), vocab_ids=vocab.astype(np.int32),
        logits=logits[:, vocab].astype(np.float32), argmax=logits.argmax(-1).astype(np.int32),
        tokenized=json.dumps(tokenized))
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
