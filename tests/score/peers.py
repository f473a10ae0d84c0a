"""Access to the peer packages the score tests compare against."""

import importlib.util

import pytest


def diversity_module(name: str):
    """One metric module of the `diversity` package, loaded by file: the package's __init__
    imports spacy and more, which are not installed (and not needed by the functions compared).

    `diversity` pins transformers < 5, so it is in no extra (it would break the resolution);
    `pip install --no-deps diversity==0.3.1` (as .ci/run does) enables the comparisons, which
    skip elsewhere. Its metric modules need only nltk, scikit-learn (test extra) and
    sentence-transformers (torch extra).
    """
    if importlib.util.find_spec("diversity") is None:
        pytest.skip("the `diversity` package is not installed")
    location = importlib.util.find_spec("diversity").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location(f"diversity_{name}", f"{location}/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
