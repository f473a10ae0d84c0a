"""Regenerate tests/score/fixtures/minilm_embeddings.npz from transformers' PyTorch BertModel.

    python tests/score/make_embed_fixture.py   (needs the torch extra)

The default test run compares jaxdiv's embedder against these fixed numbers without torch.
"""

from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_embeddings.npz"
TEXTS = [
    "What is the capital of Peru?",
    "Who wrote Hamlet?",
    "How far is it from Denver to Aspen?",
    "What county is Modesto, California in?",
    "Why does the moon turn orange during a lunar eclipse, and how long does such an eclipse "
    "usually last when it is seen from the northern hemisphere in late autumn?",
    "CNN is the abbreviation for what?",
    "Über cafés: naïve façade — résumé!",
    "ok",
]


def torch_embeddings(model_dir, texts, max_length=256):
    """transformers BertModel + attention-masked mean pooling + L2 normalisation."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


if __name__ == "__main__":
    from jaxdiv import assets

    vectors = torch_embeddings(assets.resolve("minilm-l6-v2"), TEXTS)
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, texts=np.array(TEXTS), embeddings=vectors.astype(np.float32))
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
