"""Access to the peer packages the score tests compare against."""

import importlib.util


def diversity_module(name: str):
    """A submodule of the `diversity` package, loaded by file: the package's __init__ imports spacy,
    which is not installed (and not needed by the functions compared here)."""
    location = importlib.util.find_spec("diversity").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location(f"diversity_{name}", f"{location}/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
