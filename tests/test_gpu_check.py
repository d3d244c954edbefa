"""scripts/gpu_check.py: on a machine without CUDA it says so and exits 0; its step table names every GPU path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_without_cuda_exits_cleanly(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: scripts/gpu_check.sh runs the real checks there")
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py")],
        capture_output=True,
        text=True,
        env={"OUT": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "no CUDA device" in p.stdout
    assert not any(tmp_path.iterdir())  # nothing written without a device


def test_gpu_check_covers_the_gpu_only_paths():
    src = (ROOT / "scripts" / "gpu_check.py").read_text()
    for path in ("flash_attention_2", "use_liger_kernel", "peft=qlora", "zero3", "fsdp", "vllm", "trainer.bf16=true"):
        assert path in src, f"gpu_check.py no longer exercises {path}"
