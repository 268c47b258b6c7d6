"""Jetson `tegrastats` output -> Samples: pure functions over text.

One tegrastats line is a row of `NAME value` fields whose set differs by module and L4T
release. Handled forms (see tests/data/jetson/ for a recorded line of each):

- RAM/SWAP: `RAM 4722/7844MB (lfb 1x512kB)`, `SWAP 149/1024MB (cached 7MB)`
- CPU: `CPU [55%@2035,14%@2034,off,off]` (load %, clock MHz; `off` = core offline)
- GPU: `GR3D_FREQ 0%@76` (Nano), `GR3D_FREQ 0%@[305]` (JetPack 5/6),
  `GR3D_FREQ 12%@[1300,1300]` (JetPack 7, one clock per GPC), `GR3D_FREQ @[1000,1000]` (Thor)
- temperatures: `CPU@60.5C`, `cpu@52.968C/52.968C` (JetPack 7: current/max)
- power rails (mW): `POM_5V_IN 4520/4680` (Nano, TX2: cur/avg without units),
  `VDD_IN 5704mW/5704mW` (Xavier NX, Orin NX/Nano: cur/avg),
  `VDD_GPU_SOC 5139mW/5139mW/5139mW` (JetPack 7: cur/avg/max), `VDD_IN 6848mW` (cur only)

Lines from the edgebench co-process carry a leading device timestamp (seconds of
/proc/uptime, see `harness/telemetry/coprocess.py`); a recorded trace without one is stamped
by line number and interval. Only the instantaneous rail value is kept: tegrastats' running
average covers its own start, not the measured windows, which the instantaneous values are
integrated over (harness.telemetry.energy).
"""

from __future__ import annotations

import re

from harness.boards.power import IGNORED_TEMPERATURES, INVALID_TEMPERATURE_C, JetsonModule
from harness.telemetry import Sample

_DATE = re.compile(r"^\d\d-\d\d-\d{4} \d\d:\d\d:\d\d ")
_STAMP = re.compile(r"^(\d+(?:\.\d+)?) (?=\S)")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_CORE = re.compile(r"(\d+)%(?:@(\d+))?")
_ENGINE = re.compile(r"\b(GR3D_FREQ|EMC_FREQ) (?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C(?:/-?\d+(?:\.\d+)?C)?")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)mW)?(?=\s|$)")
_RAIL_SINGLE = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)mW(?=\s|$)")
_ENGINE_NAMES = {"GR3D_FREQ": "gpu", "EMC_FREQ": "emc"}


def parse_line(line: str, t: float) -> list[Sample]:
    """Every figure of one tegrastats line, stamped `t`; an unrecognised line gives []."""
    line = _DATE.sub("", line.strip())
    out: list[Sample] = []
    if m := _RAM.search(line):
        out += [Sample(t, "tegrastats/ram_used", float(m.group(1)), "MB"), Sample(t, "tegrastats/ram_total", float(m.group(2)), "MB")]
    if m := _SWAP.search(line):
        out.append(Sample(t, "tegrastats/swap_used", float(m.group(1)), "MB"))
    if m := _CPU.search(line):
        for i, core in enumerate(m.group(1).split(",")):
            if core.strip() == "off":
                out.append(Sample(t, f"tegrastats/cpu{i}_online", 0.0, "bool"))
                continue
            if c := _CORE.fullmatch(core.strip()):
                out += [Sample(t, f"tegrastats/cpu{i}_online", 1.0, "bool"), Sample(t, f"tegrastats/cpu{i}_load", float(c.group(1)), "%")]
                if c.group(2):
                    out.append(Sample(t, f"tegrastats/cpu{i}_freq", float(c.group(2)), "MHz"))
    for m in _ENGINE.finditer(line):
        name = _ENGINE_NAMES[m.group(1)]
        if m.group(2) is not None:
            out.append(Sample(t, f"tegrastats/{name}_load", float(m.group(2)), "%"))
        if m.group(3):
            out.append(Sample(t, f"tegrastats/{name}_freq", max(float(f) for f in m.group(3).split(",") if f), "MHz"))
    for m in _TEMP.finditer(line):
        out.append(Sample(t, f"tegrastats/temp/{m.group(1)}", float(m.group(2)), "C"))
    seen = set()
    for m in _RAIL.finditer(line):
        seen.add(m.group(1))
        out.append(Sample(t, f"tegrastats/rail/{m.group(1)}", float(m.group(2)), "mW"))
    for m in _RAIL_SINGLE.finditer(line):
        if m.group(1) not in seen:
            out.append(Sample(t, f"tegrastats/rail/{m.group(1)}", float(m.group(2)), "mW"))
    return out


def parse_tegrastats(text: str, interval_s: float = 1.0) -> list[Sample]:
    """A tegrastats log. Lines led by a device timestamp (the co-process's) use it; a plain
    recorded log is stamped `i * interval_s`."""
    out: list[Sample] = []
    for i, raw in enumerate(line for line in text.splitlines() if line.strip()):
        stamp = _STAMP.match(raw)
        t = float(stamp.group(1)) if stamp else i * interval_s
        out += parse_line(raw[stamp.end():] if stamp else raw, t)
    return out


def rails(samples: list[Sample]) -> set[str]:
    return {s.source.rsplit("/", 1)[1] for s in samples if s.source.startswith("tegrastats/rail/")}


def board_power(samples: list[Sample], module: JetsonModule) -> list[Sample]:
    """`power/board` in W at each tick where every rail of the module's board power was read.

    What it covers is `module.scope` (module input, or a sum of module rails; never the
    carrier board), stored with the device facts so each figure keeps its scope.
    """
    by_t: dict[float, dict[str, float]] = {}
    for s in samples:
        if s.source.startswith("tegrastats/rail/"):
            by_t.setdefault(s.t, {})[s.source.rsplit("/", 1)[1]] = s.value
    out = []
    for t in sorted(by_t):
        values = by_t[t]
        if all(r in values for r in module.board_rails):
            out.append(Sample(t, "power/board", sum(values[r] for r in module.board_rails) / 1000.0, "W"))
    return out


def temperatures(samples: list[Sample]) -> list[Sample]:
    """Real temperature readings: placeholders (PMIC@100C) and disabled zones (-256C) dropped."""
    return [
        s for s in samples
        if s.source.startswith("tegrastats/temp/")
        and s.source.rsplit("/", 1)[1] not in IGNORED_TEMPERATURES
        and s.value > INVALID_TEMPERATURE_C
    ]
