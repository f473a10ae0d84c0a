"""Fixtures for the generate tests."""

import pytest


@pytest.fixture(scope="session")
def smollm2_generator(smollm2):
    """The real generator with the buckets the generate tests share (one set of compiles)."""
    from jaxdiv.generate.sampler import JaxGenerator

    model, tokenizer = smollm2
    return JaxGenerator(model, tokenizer, batch_buckets=(8,), prompt_buckets=(64, 256), decode_chunk=8)
