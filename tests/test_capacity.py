"""benchmarks/capacity.py: the sizing arithmetic (no Ray, no torch)."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "capacity.py"
_SPEC = importlib.util.spec_from_file_location("capacity", _PATH)
capacity = importlib.util.module_from_spec(_SPEC)
sys.modules["capacity"] = capacity  # dataclasses look their module up by name
_SPEC.loader.exec_module(capacity)

Cluster, Rates = capacity.Cluster, capacity.Rates


def test_doubling_gpus_halves_an_encode_bound_extraction():
    rates = Rates(decode_clip_s_per_core=1000.0)  # decoding never bounds
    data = capacity.xd_violence()
    one = capacity.plan(data, Cluster(1, 8, 64), rates)
    two = capacity.plan(data, Cluster(2, 8, 64), rates)
    assert one["bound"] == two["bound"] == "encode (GPU)"
    assert two["extract_hours"] == pytest.approx(one["extract_hours"] / 2)
    assert one["gpu_busy_fraction"] == 1.0


def test_the_bound_flips_to_decoding_when_cores_per_gpu_drop():
    rates, data = Rates(), capacity.vaar()
    need = capacity.cores_per_gpu(data, rates)
    # cores per GPU (and the actor's core) at the threshold, on one node of 8 GPUs
    rich = Cluster(1, 8, int(need * 8) + 16)
    poor = Cluster(1, 8, int(need * 8) - 16)
    assert capacity.plan(data, rich, rates)["bound"] == "encode (GPU)"
    flipped = capacity.plan(data, poor, rates)
    assert flipped["bound"] == "decode (CPU)"
    assert flipped["gpu_busy_fraction"] < 1.0
    assert flipped["cores_per_gpu_have"] < flipped["cores_per_gpu_needed"]


def test_cores_per_gpu_is_the_rate_ratio_plus_the_actors_core():
    rates = Rates(decode_clip_s_per_core=10.0, encode_clip_s_per_gpu=300.0, visual_share=0.5)
    vaar = capacity.vaar()  # 8 frames per clip-second: the measured grid
    assert capacity.cores_per_gpu(vaar, rates) == pytest.approx(300 / 10 + 1)
    xd = capacity.xd_violence()  # 12 frames per clip-second: the visual half costs 1.5x
    assert rates.encode_rate(xd) == pytest.approx(300 / (0.5 * 1.5 + 0.5))


def test_extraction_is_the_slower_stage_over_the_efficiency():
    data, cluster = capacity.vaar(60.0), Cluster(1, 2, 9)  # 9 - 2 actors - 1 driver = 6
    rates = Rates(decode_clip_s_per_core=10.0, encode_clip_s_per_gpu=100.0, efficiency=0.5)
    p = capacity.plan(data, cluster, rates)
    assert p["decode_cores"] == 6 and p["decode_clip_s_per_s"] == pytest.approx(60.0)
    assert p["extract_hours"] == pytest.approx(3000 * 60 / (0.5 * 60) / 3600)


def test_training_scales_with_segments_and_gpus():
    rates = Rates(train_step_ms=30.0)
    vaar = capacity.vaar(64.0)  # 64 one-second segments: the measured step exactly
    steps = -(-2400 // 16)
    assert capacity.train_seconds(vaar, rates) == pytest.approx(50 * steps * 0.030)
    assert capacity.train_seconds(vaar, replace(rates, train_gpus=2)) == pytest.approx(
        50 * steps * 0.030 / 2
    )
    long = capacity.vaar(2000.0)  # cut to train.max_segments
    assert capacity.train_seconds(long, rates) == pytest.approx(50 * steps * 0.030 * 512 / 64)


def test_cli_prints_a_table_and_json(capsys):
    capacity.main(["--clusters", "1x8:64,4x8:64"])
    out = capsys.readouterr().out
    assert "XD-Violence" in out and "VAAR" in out and "4 x 8 GPU" in out
    capacity.main(["--json", "--clusters", "1x1:4"])
    result = json.loads(capsys.readouterr().out)
    assert {p["dataset"] for p in result["plans"]} == {"XD-Violence", "VAAR"}
    assert result["rates"]["encode_clip_s_per_gpu"] == capacity.ENCODE_CLIP_S_PER_GPU
    with pytest.raises(ValueError, match="NODESxGPUS:CORES"):
        Cluster.parse("8gpus")
