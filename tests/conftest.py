"""Test session set-up: 8 simulated CPU devices, one XLA compilation cache for the session, and the golden
fixtures' location."""
import os
import pathlib
import shutil
import tempfile

# Must happen before jax is imported anywhere, so sharding is exercised on 8 devices.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling dominates the suite (a tiny stage's jitted init alone takes ~50 s on 2 cores), and many tests and the
# CLIs they start compile the same tiny programs. One persistent cache, new and empty for each session (so CI
# measures a cold start) and shared by the xdist workers and every subprocess through the environment, compiles
# each program once. The controller, which imports this file first, creates it and removes it at the end.
_CACHE_OWNER = "CODI_JAX_TEST_CACHE_OWNER"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="codi_jax_test_xla_")
    os.environ[_CACHE_OWNER] = str(os.getpid())

import pytest  # noqa: E402


def pytest_unconfigure(config):
    if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

GOLDENS = pathlib.Path(os.environ.get(
    "CODI_GOLDENS", pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "goldens"))


@pytest.fixture(scope="session")
def goldens_dir() -> pathlib.Path:
    """The golden fixture folder; tests that need it skip (saying why) where it is absent, and fail in CI
    (CI=true), where a silent skip would pass the parity tests unrun."""
    if not GOLDENS.is_dir():
        message = f"golden fixtures not found at {GOLDENS} (set CODI_GOLDENS)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return GOLDENS
