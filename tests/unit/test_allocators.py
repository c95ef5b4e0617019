"""The data stages' processes allocate as stages/tables.py sets them up (measured in its comments)."""

import os
import subprocess
import sys

import pytest

from resources.settings import REPO_ROOT

PROBE = (
    "import numpy._core.multiarray as m, pyarrow as pa, stages.tables; "
    "print(m._get_madvise_hugepage(), pa.default_memory_pool().backend_name)"
)


def _probe(**env: str) -> list[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NUMPY_MADVISE_HUGEPAGE", "ARROW_DEFAULT_MEMORY_POOL")
    }
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.split()


def test_numpy_without_huge_pages_and_arrow_on_jemalloc_by_default():
    import pyarrow as pa

    hugepages, pool = _probe()
    assert hugepages == "False"  # 512 MB arrays: 6 s with huge pages here against 0.2 s without
    if "jemalloc" in pa.supported_memory_backends():
        assert pool == "jemalloc"


@pytest.mark.parametrize("value", ["1", "0"])
def test_the_environment_still_decides(value):
    hugepages, pool = _probe(NUMPY_MADVISE_HUGEPAGE=value, ARROW_DEFAULT_MEMORY_POOL="system")
    assert hugepages == str(value == "1")
    assert pool == "system"
