"""The CPU's bf16 decision: measured products, kept once per machine and in each cache, shared by passes and
training.

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
def bf16_cpu(monkeypatch, tmp_path):
    """A CPU that says it has native bf16, with no decision made yet in this process or on this machine (kept in
    ``tmp_path / "home"``)."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(precision, "_DECIDED", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))


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


def test_the_decision_is_kept_per_machine_and_in_each_cache(bf16_cpu, monkeypatch, tmp_path):
    calls = []

    def measure(fp32, bf16):
        def run():
            calls.append((fp32, bf16))
            return record(fp32, bf16)

        return run

    assert precision.cpu_bf16(tmp_path / "a", measure(60.0, 240.0))["bf16"]
    name = f"cpu-bf16-{precision.signature()}.json"
    on_machine, in_a = tmp_path / "home" / "davir-studio" / name, tmp_path / "a" / "machine" / name
    assert json.loads(on_machine.read_text())["bf16_gflops"] == json.loads(in_a.read_text())["bf16_gflops"] == 240.0
    monkeypatch.setattr(precision, "_DECIDED", {})  # a new process: the machine's file decides, noise cannot flip it
    assert precision.cpu_bf16(tmp_path / "b", measure(70.0, 40.0))["bf16"]  # another cache on this machine agrees
    assert (tmp_path / "b" / "machine" / name).exists() and calls == [(60.0, 240.0)]

    # a cache that already holds a record (written by a rank on another node) wins: the job's ranks agree
    (tmp_path / "c" / "machine").mkdir(parents=True)
    (tmp_path / "c" / "machine" / name).write_text(json.dumps(record(70.0, 40.0)))
    assert not precision.cpu_bf16(tmp_path / "c", measure(70.0, 40.0))["bf16"]

    for damaged in (on_machine, in_a):  # damaged files are measured again and replaced
        damaged.write_text("{not json")
    monkeypatch.setattr(precision, "_DECIDED", {})
    assert not precision.cpu_bf16(tmp_path / "a", measure(70.0, 40.0))["bf16"]
    assert json.loads(in_a.read_text())["fp32_gflops"] == json.loads(on_machine.read_text())["fp32_gflops"] == 70.0
    assert calls == [(60.0, 240.0), (70.0, 40.0)]


def test_a_process_measuring_at_the_same_time_adopts_the_first_answer(bf16_cpu, tmp_path):
    path = tmp_path / "home" / "davir-studio" / f"cpu-bf16-{precision.signature()}.json"

    def raced():  # another process finishes its measurement and writes first
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record(60.0, 240.0)))
        return record(70.0, 40.0)

    assert precision.cpu_bf16(None, raced)["bf16"]
    assert json.loads(path.read_text())["bf16_gflops"] == 240.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_read_only_folders_still_decide(bf16_cpu, monkeypatch, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")  # no folder can be made under it
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert not precision.cpu_bf16(blocked, lambda: record(70.0, 40.0))["bf16"]


def test_status_says_what_auto_runs_in_and_why(monkeypatch, tmp_path, bf16_cpu):
    from tests.helpers import ok

    assert '"auto" dtype not decided yet' in precision.status_line(tmp_path)  # status measures nothing
    assert not (tmp_path / "home").exists()
    precision.cpu_bf16(tmp_path, lambda: record(70.0, 40.0))
    assert '"auto" dtype fp32 (bf16 products 40 GFLOP/s, fp32 70' in precision.status_line(tmp_path)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.status_line(tmp_path).endswith('"auto" dtype fp32 (no native bf16)')
    assert precision.cpu_info()[0] in ok("--cache", str(tmp_path / "c"), "status")  # this CPU, in the status
