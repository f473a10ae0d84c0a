"""Fixtures for the model tests: the real SmolLM2 weights, loaded once per session."""

import pytest


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """(model, tokenizer) of SmolLM2-135M-Instruct, dequantised from the packaged GGUF."""
    from jaxdiv.models.llama import load_pretrained

    return load_pretrained(smollm2_gguf)
