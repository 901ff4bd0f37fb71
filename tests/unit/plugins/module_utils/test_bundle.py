# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Transfer sets on real files: pack, verify, unpack and receipts over a synthetic image store."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _bundle, _signing
from ansible_collections.airgap.microshift.plugins.module_utils._bundle import (
    BundleError,
    FAT32_MAX_FILE,
    InvalidSize,
    is_portable_path,
    make_receipt,
    parse_size,
    plan_pack,
    verify_message,
)

from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.stores import (
    BASE_IMAGES, KEY, MiB, TRUSTED, build_store, bundle_files, store_files, update_store,
)


def pack(*args, **kwargs):
    kwargs.setdefault("signing_key", KEY)
    return _bundle.pack(*args, **kwargs)


def verify(*args, **kwargs):
    kwargs.setdefault("trusted_keys", TRUSTED)
    return _bundle.verify(*args, **kwargs)


def unpack(*args, **kwargs):
    kwargs.setdefault("trusted_keys", TRUSTED)
    return _bundle.unpack(*args, **kwargs)


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    build_store(path)
    return path


# ---------------------------------------------------------------- sizes and names


@pytest.mark.parametrize("value, expected", [
    ("fat32", 4 * 1024 ** 3 - 1),
    ("FAT32", 4 * 1024 ** 3 - 1),
    ("4GiB", 4 * 1024 ** 3),
    ("dvd", 4_700_372_992),
    ("bd25", 25_025_314_816),
    ("700MiB", 700 * MiB),
    ("2G", 2_000_000_000),
    ("4.7GB", 4_700_000_000),
    ("1 MiB", MiB),
    ("123456", 123456),
    (123456, 123456),
])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["12XB", "four gigs", "-1", "", "1.5.2G", True])
def test_parse_size_rejects(value):
    with pytest.raises(InvalidSize) as info:
        parse_size(value)
    message = str(info.value)
    assert message.startswith("volume_size ") and repr(value) in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_parse_size_minimum():
    with pytest.raises(InvalidSize, match="smaller than the minimum"):
        parse_size("1KiB", option="part_size")


@pytest.mark.parametrize("path, ok", [
    ("blobs/sha256/" + "a" * 64, True),
    ("blobs/sha256/" + "a" * 64 + ".part-001", True),
    ("layouts/0001/index.json", True),
    ("images/quay.io/repo@sha256:abc", False),
    ("images/host:5000/repo", False),
    ("caf\u00e9", False),
    (".hidden", False),
    ("a/" * 100, False),
])
def test_is_portable_path(path, ok):
    assert is_portable_path(path) is ok


def test_plan_splits_large_blobs_within_fat32(tmp_path):
    """A 9 GiB blob on bd25 volumes: parts of at most 4 GiB - 1 byte, never a file FAT32 refuses."""
    big = "sha256:" + "b" * 64
    index = {"format": 1, "images": {}, "blobs": {big: 9 * 1024 ** 3, "sha256:" + "c" * 64: 5 * MiB}}
    plan = plan_pack(str(tmp_path), index, volume_size=parse_size("bd25"), part_size=FAT32_MAX_FILE)
    parts = plan["manifest"]["blobs"][big]["parts"]
    assert [p["size"] for p in parts] == [FAT32_MAX_FILE, FAT32_MAX_FILE, 9 * 1024 ** 3 - 2 * FAT32_MAX_FILE]
    assert [p["path"].rsplit(".", 1)[1] for p in parts] == ["part-001", "part-002", "part-003"]
    assert plan["manifest"]["volume_count"] == 1
    assert sum(p["size"] for p in parts) == 9 * 1024 ** 3


def test_plan_first_fit_decreasing(tmp_path):
    """Blobs fill volumes largest first; the set uses as few volumes as the sizes allow."""
    sizes = [600, 500, 400, 300, 200, 100]
    index = {"format": 1, "images": {}, "blobs": dict(("sha256:%064x" % i, s * 1024) for i, s in enumerate(sizes))}
    plan = plan_pack(str(tmp_path), index, volume_size=1150 * 1024)
    assert plan["manifest"]["volume_count"] == 2
    for vol in plan["volumes"]:
        assert vol["total_bytes"] <= 1150 * 1024


# ---------------------------------------------------------------- the round trip


def test_round_trip_with_split_blob(store, tmp_path):
    dest = str(tmp_path / "media")
    result = pack(store, dest, volume_size=MiB, release="4.18.1", versions=["microshift-4.18.1"])
    assert result["changed"] is True
    assert result["volume_count"] >= 5
    assert result["parts"] >= 3  # the 2.5 MiB layer does not fit a 1 MiB volume
    manifest = json.load(open(os.path.join(dest, "vol-001", "bundle.json")))
    assert manifest["release"] == "4.18.1" and manifest["delta"] is False
    assert set(manifest["images"]) == set(ref for ref, _s, _seed in BASE_IMAGES)
    # Every name portable, every volume within the size, identical manifests in every volume.
    for rel in bundle_files(dest):
        assert is_portable_path(rel), rel
    for vol in sorted(os.listdir(dest)):
        vol_dir = os.path.join(dest, vol)
        total = sum(os.path.getsize(os.path.join(r, n)) for r, _d, ns in os.walk(vol_dir) for n in ns)
        assert total <= MiB, vol
        with open(os.path.join(vol_dir, "bundle.json"), "rb") as handle:
            assert json.loads(handle.read()) == manifest
        # What a user does by hand, with coreutils.
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=vol_dir, check=True)
        listed = set(line.split("  ", 1)[1].strip() for line in open(os.path.join(vol_dir, "SHA256SUMS")))
        on_disk = set(os.path.relpath(os.path.join(r, n), vol_dir) for r, _d, ns in os.walk(vol_dir) for n in ns)
        assert listed == on_disk - {"SHA256SUMS", "bundle.json.sig"}
        # The signature checks by hand too: base64 of what `openssl dgst -sha256 -sign` writes.
        signature = os.path.join(str(tmp_path), "%s.sig.der" % vol)
        with open(signature, "wb") as handle:
            handle.write(base64.b64decode(open(os.path.join(vol_dir, "bundle.json.sig"), "rb").read()))
        public = os.path.join(str(tmp_path), "public.pem")
        with open(public, "wb") as handle:
            handle.write(_signing.public_key_pem(KEY))
        subprocess.run(["openssl", "dgst", "-sha256", "-verify", public, "-signature", signature, "bundle.json"],
                       cwd=vol_dir, check=True, stdout=subprocess.DEVNULL)
    # Total size within 1% plus the fixed metadata of each volume.
    unique = sum(json.load(open(os.path.join(store, "store.json")))["blobs"].values())
    assert result["unique_bytes"] == unique

    report, _manifest, _found = verify([dest], parallel=2)
    assert report["ok"], report
    assert report["missing_volumes"] == [] and report["volume_count"] == result["volume_count"]
    assert report["bytes_verified"] >= unique

    rebuilt = str(tmp_path / "rebuilt")
    # Volumes from several places and in any order: give them one by one, reversed.
    sources = [os.path.join(dest, vol) for vol in sorted(os.listdir(dest), reverse=True)]
    done = unpack(sources, rebuilt, parallel=3)
    assert done["changed"] is True and done["blobs_written"] == len(json.load(open(os.path.join(store, "store.json")))["blobs"])
    # Byte for byte, store.json included.
    assert store_files(rebuilt, parse_index=False) == store_files(store, parse_index=False)
    assert not [n for n in os.listdir(os.path.join(rebuilt, "blobs", "sha256")) if n.startswith(".")]

    # Reruns change nothing.
    assert pack(store, dest, volume_size=MiB, release="4.18.1", versions=["microshift-4.18.1"])["changed"] is False
    assert pack(store, dest, volume_size=MiB, release="4.18.1", versions=["microshift-4.18.1"], check_mode=True)["changed"] is False
    assert unpack(sources, rebuilt)["changed"] is False
    assert unpack(sources, rebuilt, check_mode=True)["changed"] is False


def test_unpacked_store_is_readable_by_skopeo(store, tmp_path):
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed")
    dest = str(tmp_path / "media")
    pack(store, dest, volume_size=MiB)
    rebuilt = str(tmp_path / "rebuilt")
    unpack([dest], rebuilt)
    index = json.load(open(os.path.join(rebuilt, "store.json")))
    for ref, image in index["images"].items():
        out = subprocess.run([skopeo, "inspect", "--raw", "--shared-blob-dir", os.path.join(rebuilt, "blobs"),
                              "oci:" + os.path.join(rebuilt, image["layout"])],
                             check=True, stdout=subprocess.PIPE).stdout
        assert "sha256:" + hashlib.sha256(out).hexdigest() == image["digest"], ref


def test_check_mode_writes_nothing(store, tmp_path):
    dest = str(tmp_path / "media")
    plan = pack(store, dest, volume_size=MiB, check_mode=True)
    assert plan["changed"] is True and plan["files_to_write"] > 0
    assert sum(v["bytes"] for v in plan["volumes"]) == plan["bytes"]
    assert not os.path.exists(dest)
    pack(store, dest, volume_size=MiB)
    rebuilt = str(tmp_path / "rebuilt")
    preview = unpack([dest], rebuilt, check_mode=True)
    assert preview["changed"] is True and preview["blobs_to_write"] > 0
    assert not os.path.exists(rebuilt)


def test_pack_resumes(store, tmp_path):
    """An interrupted pack (a file and the checksums gone): the rerun writes only what is missing."""
    dest = str(tmp_path / "media")
    first = pack(store, dest, volume_size=MiB)
    victim = os.path.join(dest, "vol-002", "blobs", "sha256")
    removed = sorted(os.listdir(victim))[0]
    os.unlink(os.path.join(victim, removed))
    os.unlink(os.path.join(dest, "vol-002", "SHA256SUMS"))
    again = pack(store, dest, volume_size=MiB)
    assert again["changed"] is True and again["files_written"] == 1
    assert again["bundle_id"] == first["bundle_id"]
    assert verify([dest])[0]["ok"]


def test_pack_with_hard_links(store, tmp_path):
    dest = str(tmp_path / "staging")
    pack(store, dest, link=True)
    blob_dir = os.path.join(dest, "vol-001", "blobs", "sha256")
    linked = [n for n in os.listdir(blob_dir) if os.stat(os.path.join(blob_dir, n)).st_nlink > 1]
    assert linked and verify([dest])[0]["ok"]


def test_pack_refuses_corrupt_store_blob(store, tmp_path):
    index = json.load(open(os.path.join(store, "store.json")))
    digest = sorted(index["blobs"], key=lambda d: -index["blobs"][d])[1]
    path = os.path.join(store, "blobs", "sha256", digest.split(":")[1])
    with open(path, "r+b") as handle:
        handle.seek(10)
        byte = handle.read(1)
        handle.seek(10)
        handle.write(bytes([byte[0] ^ 1]))
    dest = str(tmp_path / "media")
    with pytest.raises(BundleError) as info:
        pack(store, dest, volume_size=MiB)
    assert digest in str(info.value) and "corrupt" in str(info.value)
    hexdigest = digest.split(":")[1]
    assert not [f for f in bundle_files(dest) if hexdigest in f]


def test_pack_names_blob_missing_from_store(store, tmp_path):
    index = json.load(open(os.path.join(store, "store.json")))
    digest = sorted(index["blobs"])[0]
    os.unlink(os.path.join(store, "blobs", "sha256", digest.split(":")[1]))
    with pytest.raises(BundleError, match=digest):
        pack(store, str(tmp_path / "media"))


def test_pack_checks_free_space(store, tmp_path, monkeypatch):
    monkeypatch.setattr(_bundle, "free_bytes", lambda path: 1000)
    dest = str(tmp_path / "media")
    with pytest.raises(BundleError) as info:
        pack(store, dest, volume_size=MiB)
    assert dest in str(info.value) and "1000 bytes" in str(info.value)
    assert info.value.details["free"] == 1000 and info.value.details["needed"] > 4 * MiB


def test_pack_single_volume(store, tmp_path):
    dest = str(tmp_path / "media")
    full = pack(store, dest, volume_size=MiB, check_mode=True)
    only = pack(store, dest, volume_size=MiB, only_volumes=[3])
    assert os.listdir(dest) == ["vol-003"]
    assert only["bundle_id"] == full["bundle_id"]
    with pytest.raises(BundleError, match="vol-099"):
        pack(store, dest, volume_size=MiB, only_volumes=[99])


def test_one_medium_per_volume(store, tmp_path):
    """Each volume packed alone onto its own medium: together they verify and unpack as one set."""
    count = pack(store, str(tmp_path / "plan"), volume_size=MiB, check_mode=True)["volume_count"]
    media = []
    for number in range(count, 0, -1):
        medium = str(tmp_path / ("stick%d" % number))
        pack(store, medium, volume_size=MiB, only_volumes=[number])
        assert os.listdir(medium) == ["vol-%03d" % number]
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=os.path.join(medium, "vol-%03d" % number), check=True)
        media.append(medium)
    report = verify(media)[0]
    assert report["ok"], report
    rebuilt = str(tmp_path / "rebuilt")
    unpack(media, rebuilt)
    assert store_files(rebuilt) == store_files(store)


def test_pack_prunes_files_of_an_older_plan(store, tmp_path):
    dest = str(tmp_path / "media")
    pack(store, dest, volume_size=2 * MiB)
    pack(store, dest, volume_size=MiB)
    assert verify([dest])[0]["ok"]
    for vol in os.listdir(dest):
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=os.path.join(dest, vol), check=True)


def test_volume_too_small_for_metadata(store, tmp_path):
    with pytest.raises(BundleError, match="choose a larger volume_size"):
        pack(store, str(tmp_path / "media"), volume_size=64 * 1024 + 1)


# ---------------------------------------------------------------- damage


@pytest.fixture
def packed(store, tmp_path):
    dest = str(tmp_path / "media")
    pack(store, dest, volume_size=MiB)
    return dest


def _largest_file(vol_dir):
    blob_dir = os.path.join(vol_dir, "blobs", "sha256")
    name = max(os.listdir(blob_dir), key=lambda n: os.path.getsize(os.path.join(blob_dir, n)))
    return os.path.join(blob_dir, name), "%s/blobs/sha256/%s" % (os.path.basename(vol_dir), name)


def test_flipped_bit_is_named(packed, tmp_path):
    path, shown = _largest_file(os.path.join(packed, "vol-002"))
    with open(path, "r+b") as handle:
        handle.seek(12345)
        byte = handle.read(1)
        handle.seek(12345)
        handle.write(bytes([byte[0] ^ 0x10]))
    report = verify([packed])[0]
    assert not report["ok"] and report["corrupt"] == [shown]
    assert report["missing"] == [] and report["short"] == [] and report["missing_volumes"] == []
    assert shown in verify_message(report)
    rebuilt = str(tmp_path / "rebuilt")
    with pytest.raises(BundleError) as info:
        unpack([packed], rebuilt)
    assert os.path.basename(path).split(".")[0] in str(info.value)
    assert not os.path.exists(os.path.join(rebuilt, "store.json"))
    hexdigest = os.path.basename(path).split(".")[0]
    assert not os.path.exists(os.path.join(rebuilt, "blobs", "sha256", hexdigest))
    assert not [n for n in os.listdir(os.path.join(rebuilt, "blobs", "sha256")) if n.startswith(".")]


def test_missing_volume_is_named(packed, tmp_path):
    total = len(os.listdir(packed))
    shutil.rmtree(os.path.join(packed, "vol-003"))
    report = verify([packed])[0]
    assert report["missing_volumes"] == ["vol-003"] and not report["ok"]
    assert "vol-003 of %d is missing" % total in verify_message(report)
    with pytest.raises(BundleError, match="vol-003 of %d is missing" % total):
        unpack([packed], str(tmp_path / "rebuilt"))


def test_truncated_file_is_short(packed, tmp_path):
    path, shown = _largest_file(os.path.join(packed, "vol-001"))
    with open(path, "r+b") as handle:
        handle.truncate(100)
    report = verify([packed])[0]
    assert report["short"] == [shown] and report["corrupt"] == [] and not report["ok"]
    with pytest.raises(BundleError, match="short"):
        unpack([packed], str(tmp_path / "rebuilt"))


def test_missing_file_is_named(packed):
    path, shown = _largest_file(os.path.join(packed, "vol-002"))
    os.unlink(path)
    report = verify([packed])[0]
    assert report["missing"] == [shown]


def test_volumes_of_two_bundles_are_refused(store, tmp_path):
    one = str(tmp_path / "one")
    two = str(tmp_path / "two")
    pack(store, one, volume_size=MiB, release="a")
    pack(store, two, volume_size=MiB, release="b")
    with pytest.raises(BundleError, match="different bundles"):
        verify([os.path.join(one, "vol-001"), os.path.join(two, "vol-002")])


def test_no_volume_found(tmp_path):
    with pytest.raises(BundleError, match="No bundle volume"):
        verify([str(tmp_path)])


# ---------------------------------------------------------------- release updates


@pytest.mark.parametrize("via", ["receipt", "base"])
def test_delta_carries_only_new_blobs(store, tmp_path, via):
    first = str(tmp_path / "first")
    pack(store, first, volume_size=MiB, release="4.18.1")
    site = str(tmp_path / "site")
    unpack([first], site)
    receipt_path = str(tmp_path / "receipt.json")
    receipt, absent = make_receipt(site, release="4.18.1")
    assert absent == []
    with open(receipt_path, "w") as handle:
        json.dump(receipt, handle)

    index = json.load(open(os.path.join(store, "store.json")))
    new_blobs = update_store(store, index)
    assert len(new_blobs) >= 6
    delta = str(tmp_path / "delta")
    options = {"receipt": receipt_path} if via == "receipt" else {"base": os.path.join(first, "vol-001", "bundle.json")}
    result = pack(store, delta, volume_size=MiB, release="4.18.2", **options)
    assert result["delta"] is True and result["base"]["kind"] == ("receipt" if via == "receipt" else "bundle")
    assert result["unique_bytes"] == sum(new_blobs.values())
    assert result["blobs"] == len(new_blobs)
    manifest = json.load(open(os.path.join(delta, "vol-001", "bundle.json")))
    assert set(manifest["blobs"]) == set(new_blobs)
    assert manifest["delta"] is True and manifest["release"] == "4.18.2"
    carried = sum(os.path.getsize(os.path.join(r, n)) for r, _d, ns in os.walk(delta) for n in ns if "/blobs/" in os.path.join(r, n))
    assert carried == sum(new_blobs.values())

    assert verify([delta])[0]["ok"]
    done = unpack([delta], site)
    assert done["changed"] is True and done["blobs_written"] == len(new_blobs)
    assert store_files(site) == store_files(store)
    assert unpack([delta], site)["changed"] is False


def test_delta_without_its_base_is_refused(store, tmp_path):
    receipt_path = str(tmp_path / "receipt.json")
    with open(receipt_path, "w") as handle:
        json.dump(make_receipt(store, release="4.18.1")[0], handle)
    index = json.load(open(os.path.join(store, "store.json")))
    update_store(store, index)
    delta = str(tmp_path / "delta")
    pack(store, delta, receipt=receipt_path)
    empty = str(tmp_path / "other-site")
    with pytest.raises(BundleError) as info:
        unpack([delta], empty)
    message = str(info.value)
    assert "is a delta on receipt" in message and "release 4.18.1" in message and "lacks" in message
    assert info.value.details["missing_base_blobs"]
    assert not os.path.exists(os.path.join(empty, "store.json"))


def test_receipt_leaves_out_absent_blobs(store):
    index = json.load(open(os.path.join(store, "store.json")))
    digest = sorted(index["blobs"])[0]
    os.unlink(os.path.join(store, "blobs", "sha256", digest.split(":")[1]))
    receipt, absent = make_receipt(store)
    assert absent == [digest] and digest not in receipt["blobs"]
    assert receipt["bytes"] == sum(index["blobs"].values()) - index["blobs"][digest]


def test_receipt_of_wrong_kind(tmp_path, store):
    bad = str(tmp_path / "bad.json")
    with open(bad, "w") as handle:
        json.dump({"hello": 1}, handle)
    with pytest.raises(BundleError, match="not an airgap.microshift receipt"):
        pack(store, str(tmp_path / "media"), receipt=bad)
