"""Test configuration.

The CUDA kernels run under Numba's CUDA simulator unless PARITY_REAL_GPU=1 (set by
``scripts/gpu_check`` on a machine with a GPU). The variable must be set before numba is
imported anywhere, hence here, at the top of the first module pytest loads.
"""

import os

if os.environ.get("PARITY_REAL_GPU") != "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=30
)
settings.register_profile("dev", deadline=None, max_examples=15)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
