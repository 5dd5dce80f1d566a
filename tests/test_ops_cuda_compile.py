"""The CUDA sources compile and link (nvcc, no GPU needed): a fresh build into an empty
folder, in a separate process, then the library loads and registers a CUDA kernel for every
op. Takes a minute or two."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda_compile

BUILD = """
import json, sys
from pathlib import Path
from synfiqa.ops import loader
path = loader.build_into("cuda", Path(sys.argv[1]))
print(json.dumps({"path": str(path),
                  "kernels": {op: loader.has_kernel(op, "CUDA") for op in loader.OPS},
                  "cpu": {op: loader.has_kernel(op, "CPU") for op in loader.OPS}}))
"""


def nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidate = Path(home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else shutil.which("nvcc")


@pytest.mark.skipif(nvcc() is None, reason="no nvcc on this machine")
def test_cuda_sources_compile_link_and_register_every_op(tmp_path):
    env = dict(os.environ)
    env.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    env.setdefault("MAX_JOBS", "2")
    result = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["path"]).name.startswith("synfiqa_ops_cuda_") and Path(report["path"]).exists()
    assert report["kernels"] == {"blur_resample": True, "ref_cosine": True, "greedy_unique": True, "rasterize": True}
    assert all(report["cpu"].values())
