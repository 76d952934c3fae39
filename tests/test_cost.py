"""What a benchmark's ``--check`` compares with on this kind of CPU (gradleak.cost)."""

import platform

import torch

from gradleak import cost


def test_cpu_kind_is_the_vendor_and_torchs_vector_instructions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n")
    capability = torch.backends.cpu.get_cpu_capability()
    assert cost.cpu_kind(str(info)) == f"GenuineIntel {capability}"
    fallback = platform.processor() or platform.machine()
    assert cost.cpu_kind(str(tmp_path / "missing")) == f"{fallback} {capability}"


def test_check_reference_is_this_cpu_kinds_record_else_the_committed_numbers(monkeypatch):
    results = {"check_records": {"VendorA AVX512": {"psnr": 30.67}, "VendorB AVX2": {"psnr": 27.75}}}
    monkeypatch.setattr(cost, "cpu_kind", lambda: "VendorA AVX512")
    assert cost.check_reference(results, {"psnr": 31.31}) == ({"psnr": 30.67}, "the record for VendorA AVX512")
    monkeypatch.setattr(cost, "cpu_kind", lambda: "VendorC AVX2")
    assert cost.check_reference(results, {"psnr": 31.31}) == ({"psnr": 31.31}, "the committed numbers")
    assert cost.check_reference({}, [1, 2]) == ([1, 2], "the committed numbers")


def test_a_recorded_check_is_the_reference_on_its_cpu_kind_only(monkeypatch):
    monkeypatch.setattr(cost, "cpu_kind", lambda: "VendorA AVX512")
    results: dict = {}
    assert cost.record_check(results, {"psnr": 30.67}) == "VendorA AVX512"
    assert cost.check_reference(results, {"psnr": 31.31}) == ({"psnr": 30.67}, "the record for VendorA AVX512")
    monkeypatch.setattr(cost, "cpu_kind", lambda: "VendorB AVX2")
    assert cost.check_reference(results, {"psnr": 31.31}) == ({"psnr": 31.31}, "the committed numbers")
