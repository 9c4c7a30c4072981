"""The prepared GPU check's dry run (benchmarks/gpu_check.py --dry-run): CPU, small random checkpoint, tiny
sizes; every section must come out with numbers (the same code the GPU run executes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["machine", "checkpoint", "parity_fp32", "parity_bf16", "t3_speed", "t3_static", "s3gen_speed", "text_fast",
            "text_fastest", "flash", "jobs_2"]


@pytest.mark.timeout(300)
def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out",
                           str(tmp_path), "--budget-s", "600"], env=env, capture_output=True, text=True, timeout=290)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry_run"] and not result["errors"] and not result["skipped"]
    for name in SECTIONS:
        values = result["sections"][name]
        numbers = [v for v in values.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        assert numbers and all(v == v for v in numbers), (name, values)  # numbers, none NaN
    assert result["sections"]["parity_fp32"]["all_identical"]  # float32 batches are exact
    assert result["sections"]["t3_speed"]["batch_2_tok_s"] > 0
    assert result["sections"]["t3_static"]["static_8_tok_s"] > 0
    assert result["sections"]["s3gen_speed"]["chunks_1_s_per_audio_s"] > 0
    assert result["sections"]["text_fast"]["audio_s"] > 0
    assert result["sections"]["flash"]["flash_k3_t3_tok_s"] > 0 and result["sections"]["flash"]["ar_fast_first_audio_s"] > 0
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| section | metric | value |" in md and "text_fastest" in md
    assert json.loads(proc.stdout.splitlines()[0])["sections"].keys() == result["sections"].keys()
