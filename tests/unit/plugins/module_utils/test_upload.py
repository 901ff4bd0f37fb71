# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils._reference import parse_reference
from ansible_collections.airgap.microshift.plugins.module_utils._upload import (
    Image,
    Registry,
    UploadError,
    assign_tags,
    blob_report,
    classify_failure,
    detect_format,
    digest_tag,
    load_images,
    mapping_document,
    plan_repositories,
    PushScheduler,
    run_parallel,
    run_scheduled,
    select_images,
    source_tag,
    timestamp_stamp,
    timestamp_tag,
)

HEX = "0123456789abcdef" * 4
DIGEST = "sha256:" + HEX
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


# --------------------------------------------------------------------------- tag naming

def test_timestamp_stamp_is_yymmddhhmmss_in_utc():
    # 2026-11-24 07:30:05 UTC
    assert timestamp_stamp(1795505405) == "261124073005"
    assert len(timestamp_stamp()) == 12 and timestamp_stamp().isdigit()


@pytest.mark.parametrize("counter, expected", [(1, "mirror-261124073005-1"), (9, "mirror-261124073005-9"),
                                               (10, "mirror-261124073005-10"), (1234, "mirror-261124073005-1234")])
def test_timestamp_tag_counter_formatting(counter, expected):
    assert timestamp_tag("261124073005", counter) == expected


@pytest.mark.parametrize("stamp, counter", [("2611240730", 1), ("26112407300x", 1), ("261124073005", 0),
                                            ("261124073005", -1), ("261124073005", True), ("261124073005", "1")])
def test_timestamp_tag_rejects_bad_input(stamp, counter):
    with pytest.raises(ValueError):
        timestamp_tag(stamp, counter)


def test_digest_and_source_tags():
    assert digest_tag(DIGEST) == "sha256-" + HEX
    assert source_tag("v4.18", DIGEST) == "v4.18"
    assert source_tag(None, DIGEST) == "sha256-" + HEX
    with pytest.raises(ValueError):
        digest_tag("sha256:abc")


def _image(source, digest=DIGEST, repository=None, blobs=None):
    parsed = parse_reference(source)
    image = Image(source, "oci", "/nowhere", digest, parsed.tag, parsed.repository)
    image.repository = repository or "mirror:8443/" + image.repository_path
    image.blobs = dict((blob, 1) for blob in (blobs or []))
    return image


def test_assign_tags_timestamp_counts_in_source_order():
    images = [_image("quay.io/b/c@" + DIGEST), _image("quay.io/a/z:v1"), _image("registry.redhat.io/a/b@" + DIGEST)]
    assign_tags(images, "timestamp", "261124073005")
    assert [(i.source, i.tag) for i in sorted(images, key=lambda i: i.source)] == [
        ("quay.io/a/z:v1", "mirror-261124073005-1"),
        ("quay.io/b/c@" + DIGEST, "mirror-261124073005-2"),
        ("registry.redhat.io/a/b@" + DIGEST, "mirror-261124073005-3"),
    ]


@pytest.mark.parametrize("policy, expected", [("digest", ["sha256-" + HEX] * 2), ("source", ["v1", "sha256-" + HEX]),
                                              ("none", [None, None])])
def test_assign_tags_policies(policy, expected):
    images = [_image("quay.io/a/b:v1", repository="m/a/b"), _image("quay.io/a/c@" + DIGEST, repository="m/a/c")]
    assign_tags(images, policy, "261124073005")
    assert [i.tag for i in images] == expected


def test_assign_tags_source_collision_fails():
    other = "sha256:" + "f" * 64
    images = [_image("quay.io/a/b:v1", repository="m/a/b"), _image("registry.redhat.io/a/b:v1", other, repository="m/a/b")]
    with pytest.raises(UploadError, match="both be tagged m/a/b:v1"):
        assign_tags(images, "source", "261124073005")


def test_assign_tags_rejects_unknown_policy():
    with pytest.raises(ValueError):
        assign_tags([], "latest", "261124073005")


# --------------------------------------------------------------------------- planning

def test_plan_repositories_drops_registry_adds_namespace_and_finds_duplicates():
    a = Image("quay.io/ns/app@" + DIGEST, "oci", "/x", DIGEST, None, "ns/app")
    b = Image("registry.redhat.io/ns/app@" + DIGEST, "oci", "/y", DIGEST, None, "ns/app")
    c = Image("ns/tool:v1", "dir", "/z", "sha256:" + "1" * 64, "v1", "ns/tool")
    primaries = plan_repositories([a, b, c], "mirror.example.com:8443", "edge/site")
    assert a.repository == "mirror.example.com:8443/edge/site/ns/app"
    assert c.repository == "mirror.example.com:8443/edge/site/ns/tool"
    assert primaries == [a, c] and b.duplicate_of is a
    assert a.mapping() == {"source": a.source, "mirror": "mirror.example.com:8443/edge/site/ns/app@" + DIGEST,
                           "digest": DIGEST, "tag": None, "status": None}


def test_select_images():
    images = [_image("quay.io/a/b@" + DIGEST), _image("quay.io/a/c:v1")]
    assert select_images(images, []) == images
    assert select_images(images, ["quay.io/a/c:v1"]) == [images[1]]
    assert select_images(images, ["a/b@" + DIGEST, "quay.io/a/b@" + DIGEST]) == [images[0]]
    with pytest.raises(UploadError, match="quay.io/x/y:1"):
        select_images(images, ["quay.io/x/y:1"])


def test_mapping_document_is_sorted():
    images = [_image("quay.io/b/b:1"), _image("quay.io/a/a:1")]
    assert [entry["source"] for entry in mapping_document(images)] == ["quay.io/a/a:1", "quay.io/b/b:1"]


# --------------------------------------------------------------------------- reading stores and dir trees

def _write_blob(directory, document):
    data = json.dumps(document).encode() if not isinstance(document, bytes) else document
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, digest), "wb") as handle:
        handle.write(data)
    return "sha256:" + digest, len(data)


def _manifest(config, layers):
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": config[1]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s} for d, s in layers]}


def blobs_dir(root):
    return os.path.join(root, "blobs", "sha256")


def _store(root):
    blobs = os.path.join(root, "blobs", "sha256")
    layer = _write_blob(blobs, b"layer")
    config = _write_blob(blobs, b"{}")
    amd = _write_blob(blobs, _manifest(config, [layer]))
    arm = _write_blob(blobs, _manifest(config, [layer, _write_blob(blobs, b"arm")]))
    index = _write_blob(blobs, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd[0], "size": amd[1]},
        {"mediaType": OCI_MANIFEST, "digest": arm[0], "size": arm[1]}]})
    ref = "quay.io/ns/app@" + index[0]
    layout = "images/quay.io/ns/app/sha256-" + index[0][7:]
    os.makedirs(os.path.join(root, layout))
    with open(os.path.join(root, layout, "index.json"), "w") as handle:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": OCI_INDEX, "digest": index[0], "size": index[1]}]}, handle)
    blobs = dict((d, n) for d, n in (layer, config, amd, arm, index))
    shared = [{"digest": config[0], "size": config[1]}, {"digest": layer[0], "size": layer[1]}]
    entry = {"digest": index[0], "media_type": OCI_INDEX, "manifest_size": index[1], "layout": layout, "manifests": [
        {"digest": amd[0], "size": amd[1], "media_type": OCI_MANIFEST, "blobs": list(shared)},
        {"digest": arm[0], "size": arm[1], "media_type": OCI_MANIFEST, "blobs": list(shared)}]}
    # the arm manifest's own layer: the one blob file not named above
    for name in [d for d in os.listdir(blobs_dir(root)) if "sha256:" + d not in blobs]:
        blobs["sha256:" + name] = os.path.getsize(os.path.join(blobs_dir(root), name))
        entry["manifests"][1]["blobs"].append({"digest": "sha256:" + name, "size": blobs["sha256:" + name]})
    with open(os.path.join(root, "store.json"), "w") as handle:
        json.dump({"format": 1, "images": {ref: entry}, "blobs": blobs}, handle)
    return ref, index[0], [amd[0], arm[0]], layer, config


def test_load_store_walks_index_and_manifests(tmp_path):
    ref, top, per_arch, layer, config = _store(str(tmp_path))
    images, fmt = load_images(str(tmp_path))
    assert fmt == "store" and detect_format(str(tmp_path)) == "store"
    (image,) = images
    assert image.source == ref and image.digest == top and image.transport == "oci"
    assert image.manifests == [top] + per_arch
    assert image.blobs[layer[0]] == layer[1] and image.blobs[config[0]] == config[1] and len(image.blobs) == 3


def test_load_store_missing_manifest_names_the_image(tmp_path):
    ref, top, per_arch, dummy, dummy2 = _store(str(tmp_path))
    os.remove(os.path.join(str(tmp_path), "blobs", "sha256", per_arch[1][7:]))
    with pytest.raises(UploadError, match="is not complete in the store"):
        load_images(str(tmp_path), "store")


def test_load_store_rejects_bad_index(tmp_path):
    with open(os.path.join(str(tmp_path), "store.json"), "w") as handle:
        json.dump({"format": 3}, handle)
    with pytest.raises(UploadError, match="has format 3; this collection reads formats 1 and 2"):
        load_images(str(tmp_path))


def test_load_dir_tree(tmp_path):
    root = str(tmp_path)
    image_dir = os.path.join(root, "ns", "app:v1")
    config = _write_blob(image_dir, b"{}")
    layer = _write_blob(image_dir, b"layer")
    with open(os.path.join(image_dir, "manifest.json"), "w") as handle:
        json.dump(_manifest(config, [layer]), handle)
    with open(os.path.join(image_dir, "version"), "w") as handle:
        handle.write("Directory Transport Version: 1.1\n")
    images, fmt = load_images(root)
    assert fmt == "dir"
    (image,) = images
    assert (image.source, image.source_tag, image.repository_path, image.transport) == ("ns/app:v1", "v1", "ns/app", "dir")
    with open(os.path.join(image_dir, "manifest.json"), "rb") as handle:
        assert image.digest == "sha256:" + hashlib.sha256(handle.read()).hexdigest()

    # A directory named by digest must hold that manifest.
    wrong = os.path.join(root, "ns", "other@" + DIGEST)
    os.makedirs(wrong)
    with open(os.path.join(wrong, "manifest.json"), "w") as handle:
        json.dump(_manifest(config, []), handle)
    with pytest.raises(UploadError, match="not the one its name pins"):
        load_images(root, "dir")


def test_load_dir_tree_index_needs_per_arch_manifests(tmp_path):
    image_dir = os.path.join(str(tmp_path), "ns", "multi:v1")
    os.makedirs(image_dir)
    with open(os.path.join(image_dir, "manifest.json"), "w") as handle:
        json.dump({"schemaVersion": 2, "mediaType": OCI_INDEX,
                   "manifests": [{"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 1}]}, handle)
    with pytest.raises(UploadError, match="%s.manifest.json" % HEX):
        load_images(str(tmp_path))


def test_load_images_errors(tmp_path):
    with pytest.raises(UploadError, match="not a directory"):
        load_images(str(tmp_path / "missing"))
    with pytest.raises(UploadError, match="No image directory"):
        load_images(str(tmp_path))


# --------------------------------------------------------------------------- skopeo command lines and output

def test_copy_and_inspect_args():
    image = Image("quay.io/a/b@" + DIGEST, "oci", "/store/images/quay.io/a/b/sha256-" + HEX, DIGEST, None, "a/b")
    image.repository = "mirror:8443/a/b"
    image.tag = "mirror-261124073005-1"
    registry = Registry("/usr/bin/skopeo", "/root/auth.json", True, "/etc/certs")
    args = registry.copy_args(image, "/store")
    assert args[:3] == ["/usr/bin/skopeo", "--debug", "copy"]
    for flag in ("--all", "--preserve-digests", "--retry-times=0", "--dest-authfile=/root/auth.json",
                 "--dest-cert-dir=/etc/certs", "--dest-tls-verify=true", "--src-shared-blob-dir=/store/blobs"):
        assert flag in args
    assert args[-2:] == ["oci:" + image.path, "docker://mirror:8443/a/b:mirror-261124073005-1"]
    image.tag = None
    insecure = Registry("skopeo", tls_verify=False).copy_args(image, "/store")
    assert insecure[-1] == "docker://mirror:8443/a/b@" + DIGEST and "--dest-tls-verify=false" in insecure
    inspect = Registry("skopeo", None, False).inspect_args("m/a/b", DIGEST)
    assert inspect[:2] == ["skopeo", "inspect"] and "--raw" in inspect and "--tls-verify=false" in inspect
    assert inspect[-1] == "docker://m/a/b@" + DIGEST
    image.transport, image.path = "dir", "/tree/a/b@" + DIGEST
    args = Registry("skopeo").copy_args(image)
    assert args[-2] == "dir:/tree/a/b@" + DIGEST and not any(arg.startswith("--src-shared-blob-dir") for arg in args)


def test_blob_report():
    stderr = "\n".join([
        'time="x" level=debug msg="Upload of layer %s complete"' % DIGEST,
        'time="x" level=debug msg="Skipping blob sha256:%s (already present):"' % ("f" * 64),
        'time="x" level=fatal msg="writing blob: unauthorized: authentication required"',
    ])
    assert blob_report(stderr) == ([DIGEST], ["sha256:" + "f" * 64])
    assert blob_report("") == ([], [])


@pytest.mark.parametrize("message, kind", [
    ("checking whether a blob exists: unauthorized: authentication required", "permanent"),
    ("requested access to the resource is denied", "permanent"),
    ('Get "https://m/v2/": x509: certificate signed by unknown authority', "permanent"),
    ("read tcp 127.0.0.1:1->127.0.0.1:2: read: connection reset by peer", "transient"),
    ("invalid status code from registry 503 (Service Unavailable)", "transient"),
    ("toomanyrequests: too many requests", "transient"),
    ("manifest unknown: manifest unknown", "permanent"),
])
def test_classify_failure_follows_the_shared_rules(message, kind):
    assert classify_failure(message) == kind


def _scripted_runner(answers, calls):
    """A stand-in for skopeo that answers from a script (the retry rules are the subject, not skopeo)."""
    def runner(argv, env=None):
        calls.append(argv)
        return answers.pop(0)
    return runner


def test_push_retries_transient_errors_and_counts_blobs():
    image = Image("quay.io/a/b@" + DIGEST, "oci", "/s/images/x", DIGEST, None, "a/b")
    image.repository = "m/a/b"
    calls, slept = [], []
    answers = [(1, b"", 'level=debug msg="Upload of layer sha256:%s complete"\nlevel=fatal msg="connection reset by peer"' % ("1" * 64)),
               (0, b"", 'level=debug msg="Skipping blob sha256:%s (already present):"' % ("1" * 64))]
    registry = Registry("skopeo", runner=_scripted_runner(answers, calls), retries=3, retry_delay=1.0, sleep=slept.append)
    assert registry.push(image, "/s") == (True, None)
    assert image.attempts == 2 and len(slept) == 1 and 0.5 <= slept[0] <= 1.0
    assert image.uploaded == ["sha256:" + "1" * 64] and image.reused == ["sha256:" + "1" * 64]


def test_served_tells_absent_from_broken():
    body = b'{"schemaVersion": 2}'
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    calls = []
    registry = Registry("skopeo", runner=_scripted_runner([
        (0, body, ""),
        (1, b"", 'level=fatal msg="reading manifest %s in m/a/b: manifest unknown: manifest unknown"' % digest),
        (1, b"", 'level=fatal msg="pinging container registry m: x509: certificate signed by unknown authority"'),
        (0, b"{}", ""),
    ], calls), retries=0)
    assert registry.served("m/a/b", digest) == (True, None)
    assert registry.served("m/a/b", digest) == (False, None)
    served, message = registry.served("m/a/b", digest)
    assert not served and "x509" in message
    served, message = registry.served("m/a/b", digest)
    assert not served and "another digest" in message


# --------------------------------------------------------------------------- scheduling

def test_run_scheduled_never_runs_two_pushes_of_one_new_blob_together():
    images = [_image("quay.io/x/i%d:1" % n, blobs=blobs) for n, blobs in enumerate(
        [["base", "a"], ["base", "b"], ["c"], ["d"], ["base", "e"], ["c", "f"], ["g"]])]
    lock = threading.Lock()
    running = []
    overlaps = []
    order = []
    max_running = [0]

    def work(image):
        with lock:
            for other in running:
                if set(other.blobs) & set(image.blobs) - set(done):
                    overlaps.append((other.source, image.source))
            running.append(image)
            order.append(image.source)
            max_running[0] = max(max_running[0], len(running))
        time.sleep(0.05)
        with lock:
            running.remove(image)
            done.update(image.blobs)
        return True

    done = set()
    assert run_scheduled(images, 3, work) == []
    assert overlaps == []
    assert sorted(order) == sorted(i.source for i in images)
    # a push of a blob other pushes wait for goes first: the smallest such (i2: c, also in i5)
    assert order[0] == "quay.io/x/i2:1"
    assert max_running[0] >= 2


def test_push_scheduler_sends_shared_blobs_first_smallest_image_first():
    MB = 1000000
    needs = {
        "big-on-base": {"base": 200 * MB, "big": 90 * MB},
        "small-on-base": {"base": 200 * MB, "small": 1 * MB},
        "mid-on-base": {"base": 200 * MB, "mid": 20 * MB, "m1": 5 * MB},
        "mid-too": {"mid": 20 * MB, "m2": 5 * MB},
        "alone-large": {"x": 50 * MB},
        "alone-small": {"y": 2 * MB},
    }
    scheduler = PushScheduler(needs)
    order = []
    while True:
        name = scheduler.next_ready()
        if name is None:
            break
        scheduler.start(name)
        order.append(name)
    # most bytes that others wait for first (base and mid), then, as nothing else can go while
    # they are sent, the images that share nothing, largest first
    assert order == ["mid-on-base", "alone-large", "alone-small"]
    scheduler.finish("mid-on-base")
    # base and mid are there: nothing is shared any more, the largest goes first
    assert scheduler.missing("mid-too") == {"m2": 5 * MB}
    assert scheduler.next_ready() == "big-on-base"
    scheduler.start("big-on-base")
    assert scheduler.next_ready() == "mid-too"
    scheduler.start("mid-too")
    assert scheduler.next_ready() == "small-on-base"
    scheduler.finish("big-on-base", success=False)
    # a failed push leaves its blobs missing
    assert scheduler.missing("big-on-base") == {"big": 90 * MB}


def test_push_scheduler_starts_from_what_the_registry_has():
    scheduler = PushScheduler({"a": {"base": 5, "a": 1}, "b": {"base": 5, "b": 1}}, present={"base"})
    first = scheduler.next_ready()
    scheduler.start(first)
    # the base is there already: both can run at once
    assert scheduler.next_ready() == ({"a", "b"} - {first}).pop()


def test_run_scheduled_failed_push_releases_its_blobs_and_stop_halts():
    images = [_image("quay.io/x/i%d:1" % n, blobs=["base"]) for n in range(4)]
    calls = []

    def work(image):
        calls.append(image.source)
        return False

    assert run_scheduled(images, 2, work) == []
    assert len(calls) == 4

    stop = [False]
    calls[:] = []

    def failing(image):
        calls.append(image.source)
        stop[0] = True
        return False

    left = run_scheduled(images, 1, failing, lambda: stop[0])
    assert calls == ["quay.io/x/i0:1"] and len(left) == 3


def test_run_scheduled_reraises_errors_of_work():
    def work(image):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_scheduled([_image("quay.io/x/y:1")], 2, work)


def test_run_parallel_keeps_order():
    assert run_parallel(list(range(20)), 4, lambda n: n * n) == [n * n for n in range(20)]
    assert run_parallel([], 4, lambda n: n) == []
