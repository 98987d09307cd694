"""The host capability profile: /proc/cpuinfo parsing, observing this host, fake GPUs, the capability digest
and the human rendering. No Docker engine is started: the engine is always one that is not there."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from reconciler.api.host import HostProfile
from reconciler.observe.docker_engine import DockerEngine
from reconciler.observe.gpus import FAKE_GPUS_VARIABLE, read_inventory
from reconciler.observe.host_profile import CPUINFO, observe_cpu, observe_host_profile, observe_os, parse_cpuinfo
from reconciler.cli.host_table import host_table

GiB = 2**30
NO_ENGINE = "unix:///nonexistent.sock"

# Two processors of an AMD EPYC (Zen 5) VM, as its /proc/cpuinfo lists them.
X86_CPUINFO = """\
processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 26
model		: 2
model name	: AMD EPYC
stepping	: 1
cpu MHz		: 2596.104
cache size	: 1024 KB
cpu cores	: 2
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 clzero xsaveerptr arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm avx512_vp2intersect
bugs		: sysret_ss_attrs null_seg spectre_v1 spectre_v2 spec_store_bypass srso spectre_v2_user
bogomips	: 5192.20

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 26
model		: 2
model name	: AMD EPYC
stepping	: 1
cpu MHz		: 2596.104
cache size	: 1024 KB
cpu cores	: 2
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 clzero xsaveerptr arat avx512vbmi umip avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm avx512_vp2intersect
bugs		: sysret_ss_attrs null_seg spectre_v1 spectre_v2 spec_store_bypass srso spectre_v2_user
bogomips	: 5192.20
"""

# An AWS Graviton3 (Neoverse V1): arm64 names no model and lists `Features`.
ARM64_CPUINFO = """\
processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd40
CPU revision	: 1

processor	: 1
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd40
CPU revision	: 1
"""

# A Raspberry Pi 4 running a 32-bit kernel: `neon` rather than `asimd`, the board as `Model`.
ARMV7_CPUINFO = """\
processor	: 0
model name	: ARMv7 Processor rev 3 (v7l)
BogoMIPS	: 108.00
Features	: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32
CPU implementer	: 0x41
CPU architecture: 7
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

Hardware	: BCM2711
Revision	: c03114
Serial		: 10000000a1b2c3d4
Model		: Raspberry Pi 4 Model B Rev 1.4
"""

TWO_GPUS = [
    {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-11111111-2222-3333-4444-555555555555",
     "memoryTotal": 80 * GiB, "memoryFree": 79 * GiB, "computeCapability": "9.0"},
    {"index": 1, "name": "NVIDIA GeForce RTX 4090", "uuid": "GPU-66666666-7777-8888-9999-000000000000",
     "memoryTotal": 24 * GiB, "memoryFree": 20 * GiB, "computeCapability": "8.9"},
]


@pytest.fixture
def no_fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAKE_GPUS_VARIABLE, raising=False)


def fake_gpus(monkeypatch: pytest.MonkeyPatch, folder: Path, gpus: list[dict[str, Any]]) -> None:
    inventory = folder / f"gpus-{len(gpus)}.json"
    inventory.write_text(json.dumps(gpus))
    monkeypatch.setenv(FAKE_GPUS_VARIABLE, str(inventory))


def observe(cache_dir: Path) -> HostProfile:
    return observe_host_profile(cache_dir, DockerEngine(NO_ENGINE))


class TestCpuinfo:
    def test_x86_keeps_only_the_inference_flags(self) -> None:
        model, flags = parse_cpuinfo(X86_CPUINFO)
        assert model == "AMD EPYC"
        assert flags == [
            "avx", "avx2", "avx512_bf16", "avx512_bitalg", "avx512_vbmi2", "avx512_vnni", "avx512_vp2intersect",
            "avx512_vpopcntdq", "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512ifma", "avx512vbmi", "avx512vl",
            "avx_vnni", "f16c", "fma",
        ]

    def test_amx_flags_are_kept(self) -> None:
        _, flags = parse_cpuinfo("model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: sse2 avx amx_bf16 amx_tile amx_int8 vmx\n")
        assert flags == ["amx_bf16", "amx_int8", "amx_tile", "avx"]

    def test_arm64_features_without_a_model_name(self) -> None:
        model, flags = parse_cpuinfo(ARM64_CPUINFO)
        assert model is None
        # asimddp, asimdhp, svei8mm...: named like the kept flags, but not them
        assert flags == ["asimd", "sve"]

    def test_armv7_neon_and_its_model_name(self) -> None:
        assert parse_cpuinfo(ARMV7_CPUINFO) == ("ARMv7 Processor rev 3 (v7l)", ["neon"])

    def test_a_flag_only_some_processors_have_is_not_usable(self) -> None:
        uneven = X86_CPUINFO.replace(" avx512f ", " ", 1)
        _, flags = parse_cpuinfo(uneven)
        assert "avx512f" not in flags
        assert "avx512bw" in flags

    def test_empty_text(self) -> None:
        assert parse_cpuinfo("") == (None, [])

    def test_no_cpuinfo_means_unknown_flags_not_none_of_them(self, tmp_path: Path) -> None:
        cpu = observe_cpu(tmp_path / "cpuinfo")
        assert cpu.flags is None
        assert cpu.logical_cores == psutil.cpu_count()


@pytest.mark.usefixtures("no_fake_gpus")
class TestThisHost:
    def test_cpu_memory_os(self, tmp_path: Path) -> None:
        profile = observe(tmp_path)
        model, flags = parse_cpuinfo(CPUINFO.read_text())
        assert (profile.cpu.model, profile.cpu.flags) == (model, flags)
        assert profile.cpu.logical_cores == psutil.cpu_count() == os.cpu_count()
        assert profile.cpu.physical_cores == psutil.cpu_count(logical=False)
        assert profile.cpu.architecture == platform.machine()
        assert profile.memory.total == psutil.virtual_memory().total
        assert 0 < profile.memory.available <= profile.memory.total
        assert profile.os.system == platform.system()
        assert profile.os.kernel_release == os.uname().release
        if Path("/etc/os-release").exists():
            pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)"?$', Path("/etc/os-release").read_text(), re.M)
            assert pretty and profile.os.distribution == pretty.group(1)

    def test_gpus_or_the_reason_there_are_none(self, tmp_path: Path) -> None:
        gpus = observe(tmp_path).gpus
        assert gpus.source == "nvml"
        if gpus.devices:  # a workstation with its GPUs
            assert gpus.reason is None and gpus.driver_version and gpus.cuda_version
            assert all(gpu.uuid.startswith("GPU-") and gpu.memory_total > 0 for gpu in gpus.devices)
        else:
            assert gpus.reason and "NVML" in gpus.reason
            assert (gpus.driver_version, gpus.cuda_version) == (None, None)

    def test_disk_of_an_existing_folder(self, tmp_path: Path) -> None:
        disk = observe(tmp_path).disk
        usage = shutil.disk_usage(tmp_path)
        assert disk.path == str(tmp_path)
        assert disk.total == usage.total
        assert disk.free is not None and abs(disk.free - usage.free) < 256 * 2**20  # other writers on the disk
        assert disk.reason is None

    def test_disk_of_a_cache_not_made_yet_is_its_nearest_parent(self, tmp_path: Path) -> None:
        disk = observe(tmp_path / "models" / "gguf").disk
        assert disk.path == str(tmp_path)
        assert disk.total == shutil.disk_usage(tmp_path).total

    def test_no_os_release(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def missing() -> dict[str, str]:
            raise FileNotFoundError("/etc/os-release")

        monkeypatch.setattr(platform, "freedesktop_os_release", missing)
        host_os = observe_os()
        assert host_os.distribution is None
        assert host_os.system == platform.system()


class TestContainerEngine:
    def test_unreachable_engine_says_where_and_why(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
        started = time.monotonic()
        engine = observe_host_profile(tmp_path, DockerEngine()).container_engine
        assert time.monotonic() - started < 5
        assert engine.reachable is False
        assert engine.address == NO_ENGINE
        assert engine.version is None
        assert engine.reason == f"Docker engine at {NO_ENGINE} is not reachable: no socket there (is the engine running?)"

    def test_no_engine_asked(self, tmp_path: Path) -> None:
        engine = observe_host_profile(tmp_path, None).container_engine
        assert (engine.reachable, engine.address, engine.version) == (False, None, None)
        assert engine.reason


class TestFakeGpus:
    def test_every_field_comes_through(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        fake_gpus(monkeypatch, tmp_path, TWO_GPUS)
        gpus = observe(tmp_path).gpus
        assert gpus.source == "fake"
        assert gpus.reason is None
        dumped = [gpu.model_dump(by_alias=True) for gpu in gpus.devices]
        assert dumped == TWO_GPUS
        assert (gpus.memory_total, gpus.memory_free) == (104 * GiB, 99 * GiB)

    def test_compute_capability_may_be_left_out(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        fake_gpus(monkeypatch, tmp_path, [{"index": 0, "name": "NVIDIA A10", "memoryTotal": 24 * GiB}])
        (gpu,) = read_inventory().gpus
        assert (gpu.uuid, gpu.memory_free, gpu.compute_capability) == ("GPU-fake-0", 24 * GiB, None)

    def test_json_shape_is_camel_case_and_round_trips(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        fake_gpus(monkeypatch, tmp_path, TWO_GPUS)
        profile = observe(tmp_path)
        dumped = profile.model_dump(mode="json", by_alias=True)
        assert set(dumped) == {"cpu", "memory", "disk", "os", "containerEngine", "gpus", "engineBuilds", "engineBuildsUnasked"}
        assert set(dumped["cpu"]) == {"model", "logicalCores", "physicalCores", "architecture", "flags"}
        assert set(dumped["gpus"]) == {"devices", "driverVersion", "cudaVersion", "source", "reason"}
        assert dumped["gpus"]["devices"][0]["computeCapability"] == "9.0"
        assert HostProfile.model_validate(dumped) == profile


class TestCapabilityDigest:
    def test_same_host_same_digest(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        fake_gpus(monkeypatch, tmp_path, TWO_GPUS)
        first, second = observe(tmp_path), observe(tmp_path)
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.capability_digest())
        assert first.capability_digest() == second.capability_digest()

    def test_usage_does_not_change_it(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        fake_gpus(monkeypatch, tmp_path, TWO_GPUS)
        profile = observe(tmp_path)
        (tmp_path / "busy").mkdir()
        fake_gpus(monkeypatch, tmp_path / "busy", [{**gpu, "memoryFree": GiB} for gpu in TWO_GPUS])
        busier = observe(tmp_path / "busy")  # another disk path too: the disk is usage, not capability
        busier = busier.model_copy(update={
            "memory": busier.memory.model_copy(update={"available": 1}),
            "container_engine": busier.container_engine.model_copy(update={"reason": "connection refused", "address": "tcp://x:2375"}),
        })
        assert busier.gpus.memory_free == 2 * GiB != profile.gpus.memory_free
        assert busier.capability_digest() == profile.capability_digest()

    def test_capability_changes_change_it(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        fake_gpus(monkeypatch, tmp_path, TWO_GPUS)
        profile = observe(tmp_path)
        third = {"index": 2, "name": "NVIDIA L4", "uuid": "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                 "memoryTotal": 24 * GiB, "computeCapability": "8.9"}
        fake_gpus(monkeypatch, tmp_path, [*TWO_GPUS, third])
        assert observe(tmp_path).capability_digest() != profile.capability_digest()
        smaller = profile.model_copy(update={"memory": profile.memory.model_copy(update={"total": GiB})})
        assert smaller.capability_digest() != profile.capability_digest()
        upgraded = profile.model_copy(update={"gpus": profile.gpus.model_copy(update={"driver_version": "560.35.03"})})
        assert upgraded.capability_digest() != profile.capability_digest()


class TestHostTable:
    def test_gpus_one_per_line(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        fake_gpus(monkeypatch, tmp_path, TWO_GPUS)
        text = host_table(observe(tmp_path))
        assert "  GPU 0:" in text and "NVIDIA H100 80GB HBM3, 80.0 GiB (79.0 GiB free), compute 9.0" in text
        assert "  GPU 1:" in text and "NVIDIA GeForce RTX 4090, 24.0 GiB (20.0 GiB free), compute 8.9" in text
        assert "104.0 GiB (99.0 GiB free)" in text
        assert f"Docker engine at {NO_ENGINE} is not reachable" in text

    def test_no_gpus_shows_why(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        fake_gpus(monkeypatch, tmp_path, [])
        profile = observe(tmp_path)
        text = host_table(profile)
        assert "Reason:" in text and "the fake inventory lists no GPUs" in text
        assert "GPU 0" not in text
        assert text.endswith(f"Capability digest: {profile.capability_digest()}")

    def test_values_are_aligned(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        fake_gpus(monkeypatch, tmp_path, TWO_GPUS)
        rows = [line for line in host_table(observe(tmp_path)).splitlines() if line.startswith("  ")]
        columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in rows}
        assert len(rows) > 10 and len(columns) == 1


def test_a_read_of_the_desired_state_asks_nvml_for_the_gpus_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML's start-up is the slow part of asking it (it wakes every GPU's driver): the renderer and the host profile
    of one refresh share one answer."""
    from reconciler.control import workloads
    from reconciler.control.reconciler import Reconciler
    from reconciler.observe import host_profile

    asked = []

    def counted() -> Any:
        asked.append(1)
        return read_inventory()

    monkeypatch.setattr(workloads, "read_inventory", counted)
    monkeypatch.setattr(host_profile, "read_inventory", counted)
    (tmp_path / "desired").mkdir()
    Reconciler(tmp_path / "desired", tmp_path / "state", readonly=True).refresh()
    assert len(asked) == 1
