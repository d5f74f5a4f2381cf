"""The hardware hash and the Linux hardware fingerprint (docs/encryption.md)."""

import base64

from azaion_training.devapi import reference_calc_hash, reference_transport_key
from azaion_training.security.hardware import collect_hardware_info, hardware_info
from azaion_training.security.keys import api_transport_key, hardware_hash

HW = "CPU: Test CPU. GPU: None. Memory: 1024 kB. DriveSerial: S1"


def test_hardware_hash_deterministic_sensitive_base64():  # BT-HSH-01..03, ST-HSH-01/02
    assert hardware_hash(HW) == hardware_hash(HW)
    assert hardware_hash(HW) != hardware_hash(HW.replace("S1", "S2"))
    assert len(base64.b64decode(hardware_hash(HW), validate=True)) == 48
    assert hardware_hash(HW) == reference_calc_hash(f"Azaion_{HW}_%$$$)0_")


def test_api_key_depends_on_credentials_and_hardware():  # ST-HSH-03/04
    key = api_transport_key("a@b.c", "pw1", hardware_hash(HW))
    assert key == reference_transport_key("a@b.c", "pw1", HW)
    assert key != api_transport_key("a@b.c", "pw2", hardware_hash(HW))
    assert key != api_transport_key("x@b.c", "pw1", hardware_hash(HW))
    assert key != api_transport_key("a@b.c", "pw1", hardware_hash(HW + "x"))


def _fake_root(tmp_path, serials=(), by_id=(), machine_id="abc123"):
    (tmp_path / "proc").mkdir(parents=True)
    (tmp_path / "proc/cpuinfo").write_text("processor\t: 0\nmodel name\t: Fake CPU 9000\n\nprocessor\t: 1\n"
                                           "model name\t: Fake CPU 9000\n")
    (tmp_path / "proc/meminfo").write_text("MemTotal:       16384000 kB\nMemFree: 1 kB\n")
    for device, serial in serials:
        (tmp_path / "sys/block" / device / "device").mkdir(parents=True)
        (tmp_path / "sys/block" / device / "device/serial").write_text(serial + "\n")
    for name in by_id:
        (tmp_path / "dev/disk/by-id").mkdir(parents=True, exist_ok=True)
        (tmp_path / "dev/disk/by-id" / name).write_text("")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text(machine_id + "\n")
    return tmp_path


def test_fingerprint_from_proc_and_sys(tmp_path):
    root = _fake_root(tmp_path, serials=[("loop0", "LOOP"), ("sdb", "SERIAL-B"), ("sda", "SERIAL-A")])
    assert collect_hardware_info(root, gpu="NVIDIA RTX 4090") == (
        "CPU: Fake CPU 9000. GPU: NVIDIA RTX 4090. Memory: 16384000 kB. DriveSerial: SERIAL-A")


def test_fingerprint_fallbacks(tmp_path):
    by_id = _fake_root(tmp_path / "a", by_id=["wwn-0x5000", "ata-DISK_XYZ-part1", "ata-DISK_XYZ"])
    assert collect_hardware_info(by_id, gpu="None").endswith("DriveSerial: ata-DISK_XYZ")
    bare = _fake_root(tmp_path / "b")
    assert collect_hardware_info(bare, gpu="None").endswith("GPU: None. Memory: 16384000 kB. "
                                                           "DriveSerial: machine-id:abc123")


def test_this_machine_fingerprint_is_cached_and_complete():
    info = hardware_info()
    assert info is hardware_info()
    assert info.startswith("CPU: ") and ". GPU: " in info and ". Memory: " in info and ". DriveSerial: " in info
