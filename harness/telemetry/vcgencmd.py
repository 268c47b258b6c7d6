"""Raspberry Pi `vcgencmd` output -> values: pure functions over text.

`measure_temp` -> `temp=48.3'C`; `measure_clock arm` -> `frequency(0)=2400000000`;
`get_throttled` -> `throttled=0x50005`; `pmic_read_adc` (Pi 5) -> one line per PMIC channel,
`VDD_CORE_A current(7)=1.08053000A` / `VDD_CORE_V volt(15)=0.72178200V`. Power is the sum of
V*A over rails that have both a current and a voltage line, paired by name (the channel
numbers do not pair); `EXT5V_V` (the 5 V input) has no current channel, so the sum is the
PMIC's output rails only (scope: `harness.boards.power.RPI_PMIC_SCOPE`).

`get_throttled` is kept as its raw bits; bits 0-3 are the conditions now (under-voltage, arm
frequency capped, throttled, soft temperature limit), 16-19 the same since boot (Raspberry Pi
documentation, "vcgencmd: get_throttled"): the `throttled` metric reads bits 0-3.
"""

from __future__ import annotations

import re

from harness.telemetry import Sample

_TEMP = re.compile(r"temp=(-?\d+(?:\.\d+)?)'C")
_CLOCK = re.compile(r"frequency\(\d+\)=(\d+)")
_THROTTLED = re.compile(r"throttled=(0x[0-9a-fA-F]+)")
_PMIC = re.compile(r"^\s*(\S+)_([AV]) (?:current|volt)\(\d+\)=(-?\d+(?:\.\d+)?)[AV]\s*$", re.MULTILINE)


def parse_pmic(text: str) -> dict[str, tuple[float | None, float | None]]:
    """rail -> (volts, amps); either may be None where the PMIC has no such channel."""
    rails: dict[str, list[float | None]] = {}
    for name, kind, value in _PMIC.findall(text):
        rails.setdefault(name, [None, None])[0 if kind == "V" else 1] = float(value)
    return {name: (v, a) for name, (v, a) in rails.items()}


def pmic_power_w(text: str) -> float | None:
    """Sum of V*A over the rails with both readings; None when there are none (not a Pi 5)."""
    pairs = [(v, a) for v, a in parse_pmic(text).values() if v is not None and a is not None]
    return sum(v * a for v, a in pairs) if pairs else None


def parse_stream(text: str) -> list[Sample]:
    """The co-process's output: blocks led by `@ <uptime>`, then the four commands' output.

    Anything unparseable in a block (a command missing on older firmware) is skipped: the
    metric that needed it is then missing with the reason from discovery.
    """
    out: list[Sample] = []
    for block in re.split(r"^@ ", text, flags=re.MULTILINE)[1:]:
        stamp, _, body = block.partition("\n")
        try:
            t = float(stamp.strip())
        except ValueError:
            continue
        if m := _TEMP.search(body):
            out.append(Sample(t, "vcgencmd/temp", float(m.group(1)), "C"))
        if m := _CLOCK.search(body):
            out.append(Sample(t, "vcgencmd/arm_freq", int(m.group(1)) / 1e6, "MHz"))
        if m := _THROTTLED.search(body):
            out.append(Sample(t, "vcgencmd/throttled", float(int(m.group(1), 16)), "bits"))
        if (power := pmic_power_w(body)) is not None:
            out.append(Sample(t, "power/board", power, "W"))
    return out
