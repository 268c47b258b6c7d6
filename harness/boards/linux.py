"""What a Linux board is, from the text its shell prints: the facts script and its parser,
the permission hints, and the CPU features in /proc/cpuinfo.

Pure: the drivers run the scripts (transport) and hand the text here, so knowing a Jetson from
a Raspberry Pi, or which group a metric needs, is board knowledge, not transport; tests feed
recorded board output.
"""

from __future__ import annotations

import re
from typing import Any

from harness.boards.power import RPI_PMIC_SCOPE, jetson_module
from harness.records import DeviceFacts

# One round trip gathers everything `parse_facts` needs (SshDriver.facts runs it); each section is `==> name <==` then output.
FACTS_SCRIPT = r"""
s() { printf '\n==> %s <==\n' "$1"; }
s model; tr -d '\000' </proc/device-tree/model 2>/dev/null
s dmi; cat /sys/class/dmi/id/sys_vendor /sys/class/dmi/id/product_name 2>/dev/null
s nv_tegra_release; head -n 1 /etc/nv_tegra_release 2>/dev/null
s os_release; cat /etc/os-release 2>/dev/null
s uname; uname -srm
s hostname; uname -n
s nproc; getconf _NPROCESSORS_ONLN 2>/dev/null || nproc
s cpuinfo; grep -m 4 -E '^(model name|Hardware|Model|CPU part)' /proc/cpuinfo 2>/dev/null
s meminfo; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo
s nvpmodel; command -v nvpmodel >/dev/null && nvpmodel -q 2>&1
s jetson_clocks; command -v jetson_clocks >/dev/null && sudo -n jetson_clocks --show 2>&1 | head -n 40
s gpu; command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null; ls /sys/class/devfreq 2>/dev/null | grep -iE 'gpu|gv11b|ga10b|gp10b|gm20b|17000000' | sed 's/^/devfreq /'
s tools; for t in tegrastats vcgencmd nvpmodel jetson_clocks cmake c++ nvcc; do command -v "$t" >/dev/null && printf '%s\n' "$t"; done
s throttled; command -v vcgencmd >/dev/null && vcgencmd get_throttled 2>&1
exit 0
"""

# L4T release -> JetPack, from NVIDIA's JetPack archive pages.
L4T_JETPACK = {
    "32.6": "4.6", "32.7": "4.6.x", "35.1": "5.0.2", "35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2",
    "35.5": "5.1.3", "35.6": "5.1.4", "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2",
}


def facts_sections(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    for block in re.split(r"^==> ", text, flags=re.MULTILINE)[1:]:
        head, _, body = block.partition("\n")
        sections[head.removesuffix(" <==").strip()] = body.strip()
    return sections


def parse_facts(name: str, driver: str, text: str, address: str = "") -> DeviceFacts:
    """`FACTS_SCRIPT` output -> DeviceFacts (pure; tests feed recorded board output)."""
    sec = facts_sections(text)
    os_release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', sec.get("os_release", ""), re.MULTILINE))
    uname = sec.get("uname", "").split()
    cpu = dict(re.findall(r"^([^:\n]+?)\s*:\s*(.*)$", sec.get("cpuinfo", ""), re.MULTILINE))
    mem = dict(re.findall(r"^(\w+):\s+(\d+) kB", sec.get("meminfo", ""), re.MULTILINE))
    model = sec.get("model", "").strip("\x00 ") or " ".join(sec.get("dmi", "").split("\n")).strip()
    tools = set(sec.get("tools", "").split())
    extra: dict[str, Any] = {"address": address, "model": model, "tools": sorted(tools)}
    if release := sec.get("nv_tegra_release"):
        m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", release)
        if m:
            l4t = f"{m.group(1)}.{m.group(2)}"
            extra["l4t"] = l4t
            extra["jetpack"] = L4T_JETPACK.get(".".join(l4t.split(".")[:2]))
    if nvp := sec.get("nvpmodel"):
        m = re.search(r"NV Power Mode:\s*(\S+)(?:\s+(\d+))?", nvp)
        extra["power_mode"] = {"name": m.group(1), "id": int(m.group(2)) if m.group(2) else None} if m else nvp
    if clocks := sec.get("jetson_clocks"):
        extra["jetson_clocks"] = clocks if "SOC family" in clocks or "Online CPUs" in clocks else f"unavailable: {clocks.splitlines()[0]}"
    if "tegrastats" in tools or "l4t" in extra:
        module = jetson_module(model)
        extra["jetson_module"] = module.name if module else None
        extra["power_scope"] = module.scope if module else "unknown Jetson module: board power not defined (see harness/boards/power.py)"
    elif "vcgencmd" in tools:
        extra["power_scope"] = RPI_PMIC_SCOPE
        if thr := sec.get("throttled"):
            extra["throttled_at_start"] = thr
    gpus = tuple(line for line in sec.get("gpu", "").splitlines() if line.strip())
    cores = int(sec["nproc"]) if sec.get("nproc", "").isdigit() else 1
    return DeviceFacts(
        name=name,
        driver=driver,
        os=uname[0] if uname else "Linux",
        os_release=os_release.get("PRETTY_NAME", " ".join(uname[:2])),
        arch=uname[2] if len(uname) > 2 else "unknown",
        cpu_model=cpu.get("model name") or cpu.get("Model") or cpu.get("Hardware") or model or "unknown",
        cores=cores,
        ram_mb=int(mem.get("MemTotal", 0)) // 1024,
        hostname=sec.get("hostname", ""),
        gpus=gpus,
        power_source="mains (board)",
        extra=extra,
    )


# What each metric needs that a plain user may lack, checked without root in one round trip.
HINTS_SCRIPT = r"""
echo "user $(id -un)"
if command -v vcgencmd >/dev/null; then
  if vcgencmd measure_temp >/dev/null 2>&1; then echo "vcgencmd ok"; else echo "vcgencmd denied $(stat -c %G /dev/vcio 2>/dev/null)"; fi
fi
for f in /sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in1_input /sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power0_input; do
  [ -e "$f" ] || continue
  if [ -r "$f" ]; then echo "ina3221 ok $f"; else echo "ina3221 denied $f"; fi
done
if command -v jetson_clocks >/dev/null; then
  if sudo -n jetson_clocks --show >/dev/null 2>&1; then echo "jetson_clocks ok"; else echo "jetson_clocks denied $(command -v jetson_clocks)"; fi
fi
if ! dmesg >/dev/null 2>&1; then echo "dmesg denied"; fi
exit 0
"""


def permission_hints(text: str) -> dict[str, str]:
    """`HINTS_SCRIPT` output -> {metric source: what to grant}, only for what is missing (pure)."""
    user = next((line.split(maxsplit=1)[1] for line in text.splitlines() if line.startswith("user ")), "USER")
    hints: dict[str, str] = {}
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        status, _, detail = rest.partition(" ")
        if status != "denied":
            continue
        if word == "vcgencmd":
            group = detail.strip() or "video"
            hints["vcgencmd"] = f"temperature, clocks, throttling and PMIC power need group '{group}': sudo usermod -aG {group} {user} (then log in again)"
        elif word == "ina3221" and "ina3221" not in hints:
            hints["ina3221"] = f"INA3221 power rails are not readable by {user} ({detail}): add a udev rule giving them mode 0444, or read power from tegrastats"
        elif word == "jetson_clocks":
            hints["jetson_clocks"] = f"clock state in the facts needs passwordless sudo: add with visudo -f /etc/sudoers.d/edgebench:  {user} ALL=(root) NOPASSWD: {detail} --show"
        elif word == "dmesg":
            hints["dmesg"] = f"out-of-memory evidence (oom-killer in dmesg) needs group 'adm' or: sudo sysctl kernel.dmesg_restrict=0  (sudo usermod -aG adm {user})"
    return hints


def cpu_features(cpuinfo: str) -> list[str]:
    """The `Features` words every processor in an aarch64 /proc/cpuinfo has, sorted."""
    sets = [set(value.split()) for key, _, value in (line.partition(":") for line in cpuinfo.splitlines()) if key.strip() == "Features"]
    return sorted(set.intersection(*sets)) if sets else []
