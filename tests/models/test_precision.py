"""The CPU's bf16 decision: measured products, kept once per machine in the cache, shared by passes and training.

The probe itself runs for real on this CPU. The decision logic is checked for CPUs this machine is not (one with
native bf16 whose products are faster, or slower) by stating the flag and handing in measurements.
"""
import json

import pytest
import torch

from scoring.models import precision
from scoring.models.loading import pick_dtype
from scoring.train.sft_config import TrainConfig
from scoring.train.trainer import use_bf16


def record(fp32: float, bf16: float) -> dict:
    return {"cpu": "test", "fp32_gflops": fp32, "bf16_gflops": bf16, "min_gain": precision.BF16_MIN_GAIN,
            "bf16": bf16 >= precision.BF16_MIN_GAIN * fp32}  # fmt: skip


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU that says it has native bf16, with no decision made yet in this process."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(precision, "_DECIDED", {})


def test_the_probe_measures_both_products_on_this_cpu():
    measured = precision.probe()
    assert measured["fp32_gflops"] > 1 and measured["bf16_gflops"] > 0.1
    assert measured["bf16"] == (measured["bf16_gflops"] >= measured["min_gain"] * measured["fp32_gflops"])
    assert measured["probe"] == list(precision.PROBE) and measured["torch"] == torch.__version__


def test_without_native_bf16_nothing_is_measured_and_auto_is_fp32(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)

    def never():
        raise AssertionError("measured on a CPU without native bf16")

    assert precision.cpu_bf16(tmp_path, measure=never) == {"bf16": False, "reason": "no native bf16 on this CPU"}
    assert not (tmp_path / "machine").exists()


@pytest.mark.parametrize("fp32, bf16, chosen", [(60.0, 240.0, True), (70.0, 40.0, False), (50.0, 50.0, True)])
def test_auto_follows_the_measured_products(bf16_cpu, monkeypatch, tmp_path, fp32, bf16, chosen):
    monkeypatch.setattr(precision, "probe", lambda: record(fp32, bf16))  # what pick_dtype and use_bf16 measure
    assert pick_dtype("cpu", "auto", tmp_path) == (torch.bfloat16 if chosen else torch.float32)
    assert use_bf16(TrainConfig(), "cpu", tmp_path) is chosen
    assert pick_dtype("cpu", "fp32", tmp_path) == torch.float32  # asked for: never overridden
    assert use_bf16(TrainConfig(precision="bf16"), "cpu", tmp_path)
    decision = precision.cpu_bf16(tmp_path)
    assert f"{bf16 / fp32:.2f}x" in decision["reason"]


def test_the_decision_is_kept_per_cache_and_survives_the_process(bf16_cpu, monkeypatch, tmp_path):
    calls = []

    def measure(fp32, bf16):
        def run():
            calls.append((fp32, bf16))
            return record(fp32, bf16)

        return run

    assert precision.cpu_bf16(tmp_path / "a", measure(60.0, 240.0))["bf16"]
    kept = list((tmp_path / "a" / "machine").glob("cpu-bf16-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["bf16_gflops"] == 240.0
    monkeypatch.setattr(precision, "_DECIDED", {})  # a new process: the file decides, noise cannot flip it
    assert precision.cpu_bf16(tmp_path / "a", measure(70.0, 40.0))["bf16"]
    assert calls == [(60.0, 240.0)]
    assert not precision.cpu_bf16(tmp_path / "b", measure(70.0, 40.0))["bf16"]  # another cache measures for itself

    kept[0].write_text("{not json")  # a damaged file is measured again and replaced
    monkeypatch.setattr(precision, "_DECIDED", {})
    assert not precision.cpu_bf16(tmp_path / "a", measure(70.0, 40.0))["bf16"]
    assert json.loads(kept[0].read_text())["fp32_gflops"] == 70.0


def test_a_process_measuring_at_the_same_time_adopts_the_first_answer(bf16_cpu, tmp_path):
    path = tmp_path / "machine" / f"cpu-bf16-{precision.signature()}.json"

    def raced():  # another process finishes its measurement and writes first
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record(60.0, 240.0)))
        return record(70.0, 40.0)

    assert precision.cpu_bf16(tmp_path, raced)["bf16"]
    assert json.loads(path.read_text())["bf16_gflops"] == 240.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_read_only_cache_still_decides(bf16_cpu, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # its "machine" folder cannot be made
    assert not precision.cpu_bf16(blocked, lambda: record(70.0, 40.0))["bf16"]
