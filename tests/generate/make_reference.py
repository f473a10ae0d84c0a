"""Regenerate tests/generate/fixtures/greedy_reference.json with transformers (needs torch).

    python tests/generate/make_reference.py

Greedy continuations of SmolLM2-135M-Instruct (the packaged GGUF, dequantised) from
transformers' PyTorch `generate`, one prompt at a time, as token ids (EOS excluded).
"""

import json
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "greedy_reference.json"
PROMPTS = (
    "What is the capital of France?",
    "Write one question a student might ask about volcanoes.",
    "Give me a short question about the history of Rome.",
    "Which planet is known as the red planet?",
    "Ask a question whose answer is a number.",
    "Name three colours.",
)
MAX_NEW_TOKENS = 24


def transformers_greedy(gguf_path: Path) -> list[list[int]]:
    import torch

    from tests.models.make_reference import chat_ids, reference_model

    from jaxdiv.models.tokenizer import ChatTokenizer

    model, tokenizer = reference_model(gguf_path)
    (eos,) = ChatTokenizer.from_gguf(gguf_path).eos_token_ids  # <|im_end|>, from the GGUF metadata
    outputs = []
    for prompt in PROMPTS:
        ids = chat_ids(tokenizer, [{"role": "user", "content": prompt}])
        with torch.no_grad():
            generated = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                       do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                       eos_token_id=eos, pad_token_id=eos)
        new = generated[0, len(ids):].tolist()
        outputs.append(new[:new.index(eos)] if eos in new else new)
    return outputs


def main() -> None:
    from jaxdiv import assets

    gguf_path = assets.resolve("smollm2-135m-instruct") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    FIXTURE.write_text(json.dumps({"prompts": PROMPTS, "max_new_tokens": MAX_NEW_TOKENS,
                                   "token_ids": transformers_greedy(gguf_path)}, indent=1))
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
