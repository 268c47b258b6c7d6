"""tegrastats parsing on recorded public lines from five module families (tests/data/jetson)."""

from __future__ import annotations

import pytest

from harness.boards.power import jetson_module
from harness.telemetry.tegrastats import board_power, parse_line, parse_tegrastats, rails, temperatures

from .conftest import DATA

JETSON = DATA / "jetson"


def values(samples, prefix=""):
    return {s.source.removeprefix("tegrastats/"): s.value for s in samples if s.source.startswith("tegrastats/" + prefix)}


# (file, model string, board power W of the first line, rails, GPU load %, GPU MHz, max real temperature)
FAMILIES = [
    ("nano.txt", "NVIDIA Jetson Nano Developer Kit", 4.520, {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}, 0, 76, 65.0),
    ("tx2.txt", "quill", 14.025, {"VDD_IN", "VDD_CPU", "VDD_GPU", "VDD_SOC", "VDD_WIFI", "VDD_DDR"}, 42, 1300, 47.5),
    ("xavier-nx.txt", "NVIDIA Jetson Xavier NX Developer Kit", 5.079, {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}, 0, 510, 39.5),
    ("orin-nano.txt", "NVIDIA Jetson Orin Nano Developer Kit", 5.704, {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}, 0, 305, 48.843),
    ("agx-orin.txt", "NVIDIA Jetson AGX Orin Developer Kit", 5.139 + 3.268 + 5.5, {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"}, 12, 1300, 52.968),
]


@pytest.mark.parametrize("name, model, watts, rail_set, gpu_load, gpu_mhz, temp_max", FAMILIES)
def test_each_module_family(name, model, watts, rail_set, gpu_load, gpu_mhz, temp_max):
    samples = parse_tegrastats((JETSON / name).read_text(), interval_s=1.0)
    first = [s for s in samples if s.t == 0.0]
    assert rails(first) == rail_set
    module = jetson_module(model, rails(first))
    assert module is not None and set(module.board_rails) <= rail_set
    by_rails = jetson_module(None, rails(first))  # without a model string, the rails decide
    assert by_rails is not None and by_rails.board_rails == module.board_rails
    power = board_power(first, module)
    assert [p.source for p in power] == ["power/board"] and power[0].value == pytest.approx(watts)
    v = values(first)
    assert v["gpu_load"] == gpu_load and v["gpu_freq"] == gpu_mhz
    assert v["ram_used"] > 0 and v["ram_total"] > v["ram_used"]
    assert max(s.value for s in temperatures(first)) == pytest.approx(temp_max)


def test_cpu_cores_load_clock_and_offline_cores():
    v = values(parse_line((JETSON / "xavier-nx.txt").read_text(), 5.0), "cpu")
    assert v["cpu0_load"] == 3 and v["cpu0_freq"] == 1904 and v["cpu3_freq"] == 1907
    assert v["cpu4_online"] == 0 and v["cpu5_online"] == 0 and "cpu4_load" not in v
    agx = values(parse_line((JETSON / "agx-orin.txt").read_text(), 0), "cpu")
    assert sum(1 for k in agx if k.endswith("_load")) == 12


def test_three_value_rails_keep_the_instantaneous_value_and_date_prefix_is_ignored():
    samples = parse_line((JETSON / "agx-orin.txt").read_text(), 1.0)
    v = values(samples, "rail/")
    assert v == {"rail/VDD_GPU_SOC": 5139, "rail/VDD_CPU_CV": 3268, "rail/VIN_SYS_5V0": 5500}
    assert all(s.unit == "mW" for s in samples if "/rail/" in s.source)
    assert values(samples, "temp/")["temp/cpu"] == pytest.approx(52.968)  # current, not the /max


def test_nano_avg_value_is_not_taken_and_pmic_placeholder_is_not_a_temperature():
    samples = parse_line((JETSON / "nano.txt").read_text().splitlines()[0], 0)
    assert values(samples, "rail/")["rail/POM_5V_IN"] == 4520  # not the 4680 running average
    assert "temp/PMIC" in values(samples) and all("PMIC" not in s.source for s in temperatures(samples))


def test_thor_gpu_clock_without_load_and_single_value_rail():
    thor = values(parse_line((JETSON / "thor.txt").read_text(), 0))
    assert thor["gpu_freq"] == 1000 and "gpu_load" not in thor
    single = values(parse_line("RAM 929/7620MB VDD_IN 6848mW VDD_CPU_GPU_CV 1495mW VDD_SOC 2637mW", 0), "rail/")
    assert single == {"rail/VDD_IN": 6848, "rail/VDD_CPU_GPU_CV": 1495, "rail/VDD_SOC": 2637}


def test_device_stamped_lines_use_their_stamp_and_unknown_lines_give_nothing():
    line = (JETSON / "orin-nano.txt").read_text().strip()
    samples = parse_tegrastats(f"1234.56 {line}\n1234.76 {line}\n")
    assert sorted({s.t for s in samples}) == [1234.56, 1234.76]
    assert parse_line("tegrastats: command not found", 0) == []


def test_board_power_needs_every_rail_of_the_module():
    module = jetson_module("NVIDIA Jetson AGX Orin Developer Kit")
    partial = parse_line("VDD_GPU_SOC 5139mW/5139mW VDD_CPU_CV 3268mW/3268mW", 0)
    assert board_power(partial, module) == []
    assert "carrier board" in module.scope and "VIN_SYS_5V0" in module.scope


def test_module_from_model_string_or_rail_signature():
    assert jetson_module("NVIDIA Jetson AGX Orin Developer Kit").key == "agx-orin"
    assert jetson_module("NVIDIA Jetson Orin NX Engineering Reference Developer Kit").key == "orin-nx"
    assert jetson_module("NVIDIA Jetson Nano Developer Kit").key == "nano"
    assert jetson_module("NVIDIA Jetson Xavier NX Developer Kit").key == "xavier-nx"
    assert jetson_module(None, {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"}).key == "agx-orin"
    assert jetson_module(None, {"POM_5V_IN", "POM_5V_GPU"}).key == "nano"
    assert jetson_module("Raspberry Pi 5 Model B Rev 1.0") is None
