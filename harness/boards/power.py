"""Board data: which power rails each Jetson module has, and which of them make "board power".

Data, not code: adding a module is one entry in `JETSON_MODULES`. Every power figure carries
its scope, because the rails differ by module and none of them measures the carrier board's
fan, NVMe or USB devices. Sources: NVIDIA's Jetson Linux developer guides ("Jetson ... power
monitor" sections: INA3221 channel labels per module) and jetson-stats (rbonghi/jetson_stats),
whose total-power rules this table follows (sum of rails, or the module input rail where one
exists).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class JetsonModule:
    key: str
    name: str
    model_pattern: str  # regex on /proc/device-tree/model
    board_rails: tuple[str, ...]  # summed into board power
    scope: str  # what board power covers, said in words next to every figure
    signature: tuple[str, ...] = ()  # rails whose presence identifies the module when the model is unknown


JETSON_MODULES: tuple[JetsonModule, ...] = (
    JetsonModule(
        "nano", "Jetson Nano", r"Jetson[- ]Nano(?! Orin)|jetson-nano",
        ("POM_5V_IN",), "module input (POM_5V_IN, 5 V into the module; excludes the carrier board)",
        ("POM_5V_IN",),
    ),
    JetsonModule(
        "tx2", "Jetson TX2", r"TX2|quill|lightning",
        ("VDD_IN",), "module input (VDD_IN; excludes the carrier board)",
        ("VDD_IN", "VDD_DDR"),
    ),
    JetsonModule(
        "xavier-nx", "Jetson Xavier NX", r"Xavier NX",
        ("VDD_IN",), "module input (VDD_IN; excludes the carrier board)",
    ),
    JetsonModule(
        "agx-xavier", "Jetson AGX Xavier", r"AGX Xavier|Jetson-AGX",
        ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"),
        "sum of module rails GPU+CPU+SOC+CV+VDDRQ+SYS5V (no module-input rail; excludes the carrier board)",
        ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"),
    ),
    JetsonModule(
        "orin-nx", "Jetson Orin NX / Orin Nano", r"Orin (NX|Nano)|Orin Nano",
        ("VDD_IN",), "module input (VDD_IN; excludes the carrier board's fan, NVMe and USB)",
        ("VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"),
    ),
    JetsonModule(
        "agx-orin", "Jetson AGX Orin", r"AGX Orin",
        ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"),
        "sum of module rails VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0 (no module-input rail; excludes the carrier board's fan, NVMe and USB)",
        ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"),
    ),
)

# tegrastats prints these temperatures, but they are placeholders, not sensors: PMIC@100C is a
# fixed value on every module, and a disabled zone reads -256C.
IGNORED_TEMPERATURES = frozenset({"PMIC"})
INVALID_TEMPERATURE_C = -200.0

# INA3221 power monitors, readable without root (newer L4T: mainline `ina3221` hwmon; L4T 32:
# the `ina3221x` IIO driver). The probe samples these files; the labels match tegrastats' rails.
INA3221_HWMON_GLOB = "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
INA3221_IIO_GLOB = "/sys/bus/i2c/drivers/ina3221x/*/iio:device*"


def jetson_module(model: str | None, rails: set[str] | frozenset[str] = frozenset()) -> JetsonModule | None:
    """The module from its device-tree model string, else from the rails tegrastats printed."""
    for module in JETSON_MODULES:
        if model and re.search(module.model_pattern, model):
            return module
    for module in sorted(JETSON_MODULES, key=lambda m: -len(m.signature)):
        if module.signature and set(module.signature) <= set(rails):
            return module
    return None


# Raspberry Pi 5: `vcgencmd pmic_read_adc` measures the PMIC's own output rails. Their V*A sum
# is the SoC, DRAM and on-board supplies: not the 5 V input, so not USB devices, HATs, fan or
# the PMIC's conversion losses (Raspberry Pi forum threads measure ~1-1.5 W more at the wall).
RPI_PMIC_SCOPE = "sum of Raspberry Pi 5 PMIC output rails (V*A); excludes USB, HATs, fan and conversion losses"
