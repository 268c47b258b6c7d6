"""Device state and core clusters: read through the real local driver from fake sysfs trees."""

from __future__ import annotations

import json
from pathlib import Path

from harness.drivers.local import LocalDriver
from harness.plan import cores
from harness.telemetry.clusters import Cluster, parse_online, probe_cpu, read_clusters
from harness.telemetry.state import Battery, DeviceState, Process, Zram, capture_state, format_state, parse_ps, summary_parts, wait_for_cool

PS_PROCPS = """    PID %CPU   RSS COMMAND
      1  0.0 12000 systemd
   4242 97.5 800000 llama-bench
    777  3.1  5000 sshd
    900  0.0  1000 ps
"""


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _phone(root: Path) -> None:
    """A 4+4 big.LITTLE phone: little cores capped by a thermal daemon, a discharging battery."""
    files = {
        "/sys/devices/system/cpu/online": "0-7\n",
        "/proc/loadavg": "1.50 0.75 0.30 2/900 1234\n",
        "/proc/meminfo": "MemTotal:        7864320 kB\nMemAvailable:    3932160 kB\nSwapTotal:       4194304 kB\nSwapFree:        3145728 kB\n",
        "/proc/swaps": "Filename Type Size Used Priority\n/dev/block/zram0 partition 4194300 1048576 -2\n",
        "/sys/block/zram0/disksize": str(4 * 2**30) + "\n",
        "/sys/block/zram0/mm_stat": f"{2**30} {2**28} 0 0 0 0 0\n",
        "/sys/class/thermal/thermal_zone0/type": "cpu-0-0-usr\n",
        "/sys/class/thermal/thermal_zone0/temp": "38500\n",
        "/sys/class/power_supply/battery/type": "Battery\n",
        "/sys/class/power_supply/battery/capacity": "81\n",
        "/sys/class/power_supply/battery/status": "Discharging\n",
    }
    for policy, cpus, hw_max, cap, capacity in (("policy0", "0 1 2 3", "1804800", "1200000", "410"),
                                               ("policy4", "4 5 6 7", "2841600", "2841600", "1024")):
        base = f"/sys/devices/system/cpu/cpufreq/{policy}"
        files.update({f"{base}/related_cpus": cpus + "\n", f"{base}/scaling_governor": "schedutil\n",
                      f"{base}/scaling_min_freq": "300000\n", f"{base}/scaling_max_freq": cap + "\n",
                      f"{base}/scaling_cur_freq": "1000000\n", f"{base}/cpuinfo_max_freq": hw_max + "\n"})
        for cpu in cpus.split():
            files[f"/sys/devices/system/cpu/cpu{cpu}/cpu_capacity"] = capacity + "\n"
            files[f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq"] = hw_max + "\n"
    _tree(root, files)


def test_state_of_a_fake_phone(tmp_path: Path) -> None:
    _phone(tmp_path)
    state = capture_state(LocalDriver(), root=str(tmp_path))
    little, big = sorted(state.clusters, key=lambda c: c.policy)
    assert little.cpus == "0 1 2 3" and little.capped and little.max_mhz == 1200.0
    assert big.governor == "schedutil" and not big.capped and big.hw_max_mhz == 2841.6
    assert state.temps_c == {"thermal_zone0:cpu-0-0-usr": 38.5}
    assert state.battery == Battery("battery", 81.0, "Discharging")
    assert state.load_avg == (1.5, 0.75, 0.3)
    assert state.mem_available_mb == 3840.0 and state.swap_used_mb == 1024.0
    assert state.zram == (Zram("zram0", 4096.0, 1024.0, 256.0),)
    assert isinstance(state.busiest, tuple)  # this host's real ps
    text = "\n".join(format_state(state))
    assert "capped below hw max" in text and "battery: 81.0% Discharging" in text


def test_state_json_keeps_the_stored_keys_and_reads_back(tmp_path: Path) -> None:
    """Stored with every execution: the keys (and their order) the dict it replaced wrote, and
    the `{"error": ...}` form of a state that could not be read still reads."""
    _phone(tmp_path)
    state = capture_state(LocalDriver(), root=str(tmp_path))
    stored = json.loads(json.dumps(state.to_json()))
    assert list(stored) == ["clusters", "temps_c", "battery", "load_avg", "mem_total_mb", "mem_available_mb", "swap_total_mb",
                            "swap_used_mb", "zram", "busiest", "unreadable", "captured_monotonic_s"]
    assert list(stored["clusters"][0]) == ["policy", "cpus", "governor", "min_mhz", "max_mhz", "cur_mhz", "hw_max_mhz", "capped"]
    assert stored["battery"] == {"name": "battery", "level_pct": 81.0, "status": "Discharging"}
    assert stored["zram"] == [{"device": "zram0", "disksize_mb": 4096.0, "orig_data_mb": 1024.0, "compr_data_mb": 256.0}]
    assert stored["load_avg"] == [1.5, 0.75, 0.3] and isinstance(stored["busiest"], list)
    assert DeviceState.from_json(stored) == state
    unread = DeviceState.from_json({"error": "device state could not be read: gone"})
    assert unread.to_json() == {"error": "device state could not be read: gone"} and summary_parts(unread) == {"error": unread.error}


def test_state_of_a_bare_tree_says_what_is_missing(tmp_path: Path) -> None:
    state = capture_state(LocalDriver(), root=str(tmp_path))
    assert state.clusters == () and state.temps_c == {} and state.battery is None
    assert "no cpufreq policy" in "\n".join(format_state(state))


def test_ps_busiest_first_without_ps_itself() -> None:
    rows = parse_ps(PS_PROCPS)
    assert [r.name for r in rows] == ["llama-bench", "sshd", "systemd"]
    assert rows[0] == Process(4242, 97.5, 800000 / 1024, "llama-bench")


def test_cooldown_waits_until_near_idle_and_is_bounded() -> None:
    temps = iter([70.0, 60.0, 50.0, 44.0])
    clock = iter(range(100))
    done = wait_for_cool(lambda: next(temps), 42.0, tolerance_c=3.0, poll_s=1, sleep=lambda s: None,
                         clock=lambda: float(next(clock)))
    assert done.reached and done.end_c == 44.0 and done.start_c == 70.0
    hot = wait_for_cool(lambda: 80.0, 42.0, max_wait_s=5, sleep=lambda s: None, clock=lambda: float(next(clock)))
    assert not hot.reached and "still 80.0" in (hot.reason or "")
    none = wait_for_cool(lambda: None, None)
    assert not none.reached and "no CPU temperature" in (none.reason or "")


def test_clusters_fastest_first_and_threads_choices(tmp_path: Path) -> None:
    _phone(tmp_path)
    clusters = read_clusters(LocalDriver(), 8, root=str(tmp_path))
    assert [c.cpus for c in clusters] == [(4, 5, 6, 7), (0, 1, 2, 3)]
    assert clusters[0].capacity == 1024 and clusters[1].max_mhz == 1804.8
    big = cores.choose(clusters, "big")
    assert big.n_threads == 4 and big.cpu_mask == "0xf0" and "fastest" in big.why
    assert cores.choose(clusters, "all").cpu_mask == "0xff"
    assert probe_cpu(clusters, busy=big.cpus) == 3  # the slowest free core
    assert probe_cpu(clusters, busy=range(8)) is None


def test_a_machine_without_capacity_or_cpufreq_is_one_cluster(tmp_path: Path) -> None:
    _tree(tmp_path, {"/sys/devices/system/cpu/online": "0-1\n"})
    clusters = read_clusters(LocalDriver(), 2, root=str(tmp_path))
    assert clusters == [Cluster((0, 1), None, None)]
    assert cores.choose(clusters, "big").why == "all cores (one cluster)"
    assert parse_online("0-3,6,8-9") == [0, 1, 2, 3, 6, 8, 9]


def test_threads_big_resolves_per_device_and_is_recorded() -> None:
    from harness.records import Case

    phone = [Cluster((4, 5, 6, 7), 1024, 2841.6), Cluster((0, 1, 2, 3), 410, 1804.8)]
    case = Case("llamabench", "decode", 0, 32, 0, settings=(("threads", "big"),))
    run, chosen = cores.resolve_threads(case, phone)
    assert dict(run.settings) == {"threads": 4, "cpu_mask": "0xf0"}
    assert chosen is not None and chosen.cpus == (4, 5, 6, 7) and chosen.threads == "big"
    unset, chosen = cores.resolve_threads(Case("llamabench", "decode", 0, 32, 0), phone)
    assert dict(unset.settings)["threads"] == 4  # the default is the performance cores
    pc = [Cluster((0, 1), None, None)]
    same, chosen = cores.resolve_threads(Case("llamabench", "decode", 0, 32, 0), pc)
    assert same.settings == () and chosen is None  # alike cores: the runtime's default stands
    own_mask = Case("llamabench", "decode", 0, 32, 0, settings=(("cpu_mask", "0x1"), ("threads", "all")))
    assert dict(cores.resolve_threads(own_mask, phone)[0].settings) == {"threads": 8, "cpu_mask": "0x1"}
