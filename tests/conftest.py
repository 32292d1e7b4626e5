"""Test session set-up: 8 simulated CPU devices, and the golden fixtures' location."""
import os
import pathlib

# Must happen before jax is imported anywhere, so sharding is exercised on 8 devices.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

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
