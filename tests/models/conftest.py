"""Fixtures for the model tests: the real SmolLM2 weights, loaded once per session."""

import functools

import pytest


@functools.lru_cache(maxsize=1)
def load_smollm2(gguf_path):
    """(model, tokenizer) of SmolLM2-135M-Instruct, dequantised from the packaged GGUF; cached so
    every test directory shares one copy."""
    from jaxdiv.models.llama import load_pretrained

    return load_pretrained(gguf_path)


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    return load_smollm2(smollm2_gguf)
