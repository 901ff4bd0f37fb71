# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""skopeo wrapper: error classification on real stderr, argv building, retry loop."""

from __future__ import annotations

import random
import shutil

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _skopeo
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import (
    PERMANENT, TRANSIENT, RegistryOptions, Skopeo, SkopeoError, backoff_delay, classify_error, condense, last_error_line,
    subprocess_runner,
)

# stderr captured from skopeo 1.9.3 against docker-registry 2.8.2 on loopback (and a stub
# HTTP server answering 5xx / 429, and a socket closing every connection)
D = "sha256:cc4f1431f3adfda9167cc0fe5d6728460908db22e7dd733ad515d4d4a58ce166"
SAMPLES = {
    "401": 'time="2026-11-24T07:51:51Z" level=fatal msg="initializing source docker://127.0.0.1:60071/e/one@%s: reading manifest %s '
           'in 127.0.0.1:60071/e/one: unauthorized: authentication required"' % (D, D),
    "manifest": 'time="2026-11-24T07:51:51Z" level=fatal msg="Error parsing image name \\"docker://127.0.0.1:60071/e/one:nope\\": '
                'reading manifest nope in 127.0.0.1:60071/e/one: manifest unknown: manifest unknown"',
    "x509": 'time="2026-11-24T07:51:51Z" level=fatal msg="Error parsing image name \\"docker://127.0.0.1:60071/e/one@%s\\": pinging container '
            'registry 127.0.0.1:60071: Get \\"https://127.0.0.1:60071/v2/\\": x509: certificate signed by unknown authority"' % D,
    "refused": 'time="2026-11-24T07:51:51Z" level=fatal msg="Error parsing image name \\"docker://127.0.0.1:56555/e/one:v1\\": pinging container '
               'registry 127.0.0.1:56555: Get \\"http://127.0.0.1:56555/v2/\\": dial tcp 127.0.0.1:56555: connect: connection refused"',
    "503": 'time="2026-11-24T07:51:51Z" level=fatal msg="Error parsing image name \\"docker://127.0.0.1:34201/e/one:v1\\": pinging container '
           'registry 127.0.0.1:34201: invalid status code from registry 503 (Service Unavailable)"',
    "500": 'level=fatal msg="pinging container registry 127.0.0.1:34201: invalid status code from registry 500 (Internal Server Error)"',
    "502": 'level=fatal msg="pinging container registry 127.0.0.1:34201: invalid status code from registry 502 (Bad Gateway)"',
    "429": 'time="2026-11-24T07:52:51Z" level=fatal msg="Error parsing image name \\"docker://127.0.0.1:34201/e/one:v1\\": pinging container '
           'registry 127.0.0.1:34201: too many requests to registry"',
    "reset": 'time="2026-11-24T07:52:51Z" level=fatal msg="Error parsing image name \\"docker://127.0.0.1:38597/e/one:v1\\": pinging container '
             'registry 127.0.0.1:38597: Get \\"http://127.0.0.1:38597/v2/\\": read tcp 127.0.0.1:40628->127.0.0.1:38597: read: connection reset by peer"',
}


@pytest.mark.parametrize("sample, kind, word", [
    ("401", PERMANENT, "401"),
    ("manifest", PERMANENT, "manifest unknown"),
    ("x509", PERMANENT, "x509"),
    ("refused", TRANSIENT, "refused"),
    ("503", TRANSIENT, "5xx"),
    ("500", TRANSIENT, "5xx"),
    ("502", TRANSIENT, "5xx"),
    ("429", TRANSIENT, "429"),
    ("reset", TRANSIENT, "reset"),
])
def test_classify_captured_stderr(sample, kind, word):
    found, cause = classify_error(SAMPLES[sample])
    assert found == kind
    assert word in cause


@pytest.mark.parametrize("text, kind", [
    ('reading blob sha256:ab: fetching blob: received unexpected HTTP status: 504 Gateway Timeout', TRANSIENT),
    ('Get "https://quay.io/v2/": EOF', TRANSIENT),
    ('net/http: TLS handshake timeout', TRANSIENT),
    ('pinging container registry quay.io: Get "https://quay.io/v2/": http: server closed idle connection', TRANSIENT),
    ('Patch "https://m:8443/v2/a/blobs/uploads/x": net/http: HTTP/1.x transport connection broken: unexpected EOF', TRANSIENT),
    ('toomanyrequests: too many requests', TRANSIENT),
    ('denied: requested access to the resource is denied', PERMANENT),
    ('name unknown: repository name not known to registry', PERMANENT),
    ('x509: certificate has expired or is not yet valid', PERMANENT),
    ('lookup nosuch.example: no such host', PERMANENT),
    ('writing blob: open /store/blobs/sha256/x: permission denied', PERMANENT),
    ('something nobody has seen', PERMANENT),
])
def test_classify_other_messages(text, kind):
    assert classify_error(text)[0] == kind


def test_last_error_line_takes_the_fatal_message():
    assert last_error_line("Getting image source signatures\n" + SAMPLES["x509"]).endswith("x509: certificate signed by unknown authority")


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    rng = random.Random(7)
    for attempt in range(1, 10):
        ceiling = min(30.0, 2.0 * 2 ** (attempt - 1))
        for dummy in range(20):
            delay = backoff_delay(attempt, 2.0, cap=30.0, rng=rng)
            assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(3, 0) == 0.0


def test_registry_options_argv():
    opts = RegistryOptions(authfile="/a.json", tls_verify=False, cert_dir="/certs")
    assert opts.args("src-") == ["--src-authfile=/a.json", "--src-tls-verify=false", "--src-cert-dir=/certs"]
    assert RegistryOptions().args("") == ["--tls-verify=true"]


def test_copy_argv_has_no_secret_and_expected_flags():
    tool = Skopeo("/usr/bin/skopeo")
    argv = tool.copy_argv("docker://r.example/a@sha256:" + "1" * 64, "oci:/s/images/x", src_options=RegistryOptions("/auth.json"),
                          dest_shared_blob_dir="/s/blobs")
    assert argv[:2] == ["/usr/bin/skopeo", "copy"]
    for flag in ("--all", "--preserve-digests", "--retry-times=0", "--src-authfile=/auth.json", "--dest-shared-blob-dir=/s/blobs"):
        assert flag in argv
    assert argv[-2:] == ["docker://r.example/a@sha256:" + "1" * 64, "oci:/s/images/x"]
    assert not any("creds" in a or "password" in a for a in argv)


class ScriptedRunner:
    """Replays (rc, stderr) answers; stands in for the network failures a registry rarely gives on demand."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, argv, env=None):
        self.calls += 1
        rc, err = self.answers.pop(0)
        return rc, b"{}" if rc == 0 else b"", err


def test_run_retries_transient_errors_then_succeeds():
    sleeps = []
    runner = ScriptedRunner([(1, SAMPLES["503"]), (1, SAMPLES["reset"]), (0, "")])
    tool = Skopeo("skopeo", retries=5, retry_delay=1.0, runner=runner, sleep=sleeps.append, rng=random.Random(1))
    result = tool.run(["skopeo", "inspect"], "r.example/a:1")
    assert result.attempts == 3 and result.retries == 2
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0


def test_run_stops_at_once_on_permanent_error():
    runner = ScriptedRunner([(1, SAMPLES["401"]), (0, "")])
    tool = Skopeo("skopeo", retries=5, runner=runner, sleep=lambda s: None)
    with pytest.raises(SkopeoError) as err:
        tool.run(["skopeo", "copy"], "r.example/a:1")
    assert runner.calls == 1
    assert err.value.kind == PERMANENT
    assert err.value.message.startswith("r.example/a:1: authentication failed (401")


def test_run_gives_up_after_bounded_attempts():
    runner = ScriptedRunner([(1, SAMPLES["refused"])] * 4)
    tool = Skopeo("skopeo", retries=3, retry_delay=0.01, runner=runner, sleep=lambda s: None)
    with pytest.raises(SkopeoError) as err:
        tool.run(["skopeo", "copy"], "r.example/a:1")
    assert runner.calls == 4 and err.value.attempts == 4
    assert "still failing after 4 attempts" in err.value.message


def test_tries_that_get_further_do_not_use_up_the_retries():
    # Five broken tries with retries=2: the first three each got further, so only the last two count.
    sleeps = []
    runner = ScriptedRunner([(1, SAMPLES["reset"])] * 5 + [(0, "")])
    answers = [True, True, True, False, False]
    tool = Skopeo("skopeo", retries=2, retry_delay=1.0, runner=runner, sleep=sleeps.append, rng=random.Random(3))
    result = tool.run(["skopeo", "copy"], "r.example/a:1", progressed=lambda err: answers.pop(0))
    assert result.attempts == 6 and not answers
    # after a try that got further the backoff starts over; fruitless tries double it
    assert all(0.5 <= delay <= 1.0 for delay in sleeps[:4]) and 1.0 <= sleeps[4] <= 2.0


def test_tries_that_go_nowhere_end_the_retries():
    runner = ScriptedRunner([(1, SAMPLES["reset"])] * 4 + [(0, "")])
    answers = [True, False, False, False]
    tool = Skopeo("skopeo", retries=2, retry_delay=0.01, runner=runner, sleep=lambda s: None)
    with pytest.raises(SkopeoError) as err:
        tool.run(["skopeo", "copy"], "r.example/a:1", progressed=lambda err: answers.pop(0))
    assert runner.calls == 4 and "still failing after 4 attempts" in err.value.message


def test_progress_never_excuses_a_permanent_error():
    runner = ScriptedRunner([(1, SAMPLES["401"]), (0, "")])
    tool = Skopeo("skopeo", retries=5, runner=runner, sleep=lambda s: None)
    with pytest.raises(SkopeoError):
        tool.run(["skopeo", "copy"], "r.example/a:1", progressed=lambda err: True)
    assert runner.calls == 1


def test_missing_binary_is_a_clear_error():
    tool = Skopeo("/nonexistent/skopeo", retries=3)
    with pytest.raises(SkopeoError) as err:
        tool.run(["/nonexistent/skopeo", "inspect"], "r.example/a:1")
    assert "cannot run /nonexistent/skopeo" in err.value.message


@pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo (the test command installs it)")
def test_real_skopeo_connection_refused_is_transient_and_retried(tmp_path):
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    sleeps = []
    tool = Skopeo(shutil.which("skopeo"), retries=2, retry_delay=0.01, sleep=sleeps.append)
    with pytest.raises(SkopeoError) as err:
        tool.inspect_raw("127.0.0.1:%d/a/b:1" % port, RegistryOptions(tls_verify=False))
    assert err.value.kind == TRANSIENT and err.value.attempts == 3 and len(sleeps) == 2
    assert "connection refused" in err.value.message


def test_runner_keeps_output_written_as_the_process_exits():
    # AnsibleModule.run_command drops output a process writes right as its one-second select
    # times out (then the process has exited): the runner must read the pipes to their end.
    from concurrent.futures import ThreadPoolExecutor
    argv = ["sh", "-c", 'sleep 0.999; printf "%s" "$PAYLOAD"; printf oops >&2; exit 3']
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda dummy: subprocess_runner(argv, env={"PAYLOAD": "manifest"}), range(16)))
    assert results == [(3, b"manifest", "oops")] * 16


# A push of a store whose layer was changed on disk (same size), as skopeo 1.9.3 reports it: the
# upload URL carries a long _state token that used to push the cause out of the message.
CORRUPT_PUSH = (
    'time="2026-12-03T18:04:15Z" level=fatal msg="writing blob: Patch \\"http://127.0.0.1:5599/v2/a/b/blobs/uploads/'
    '8448162e-6573-40b8-b955-0ed21327d721?_state=1cYdweCpssn4ziCGIAjNObSB4N9ZY-ZGsyCZP870BBV7Ik5hbWUiOiJhL2IiLCJVVUlEIjoiODQ0ODE2MmUt'
    'NjU3My00MGI4LWI5NTUtMGVkMjEzMjdkNzIxIiwiT2Zmc2V0IjowLCJTdGFydGVkQXQiOiIyMDI2LTEyLTAzVDE4OjA0OjE1LjUxMjY0OTIzWiJ9\\": '
    'happened during read: Digest did not match, expected sha256:7e2833008a7e4f44a533dac5943a74b5f3a5d4bb6d42d7446ecf20a6ed352fc0, '
    'got sha256:81010816d720af1f5d4d8f3c543db60c796772f4ced0ce6d33395a7871deda1e"')


def test_a_corrupt_blob_is_named_with_its_digest_and_no_token():
    kind, cause = classify_error(CORRUPT_PUSH)
    assert kind == PERMANENT
    assert cause == ("blob sha256:7e2833008a7e4f44a533dac5943a74b5f3a5d4bb6d42d7446ecf20a6ed352fc0 does not match its digest "
                     "(its content hashes to sha256:81010816d720af1f5d4d8f3c543db60c796772f4ced0ce6d33395a7871deda1e)")
    detail = last_error_line(CORRUPT_PUSH)
    assert "_state" not in detail and "?" not in detail
    assert "http://127.0.0.1:5599/v2/a/b/blobs/uploads/8448162e..." in detail
    assert detail.endswith("got sha256:81010816d720af1f5d4d8f3c543db60c796772f4ced0ce6d33395a7871deda1e")
    # the registry's own word for it (a push whose digest the registry computed differently)
    assert classify_error("digest invalid: provided digest did not match uploaded content") == (PERMANENT, "a blob does not match its digest")


def test_condense_keeps_the_cause_at_the_end():
    text = "copying: " + "x" * 600 + ": the cause"
    short = condense(text, 100)
    assert len(short) <= 100 and short.startswith("copying: ") and short.endswith(": the cause") and " ... " in short
    assert condense("GET https://r.example/v2/token?scope=repository:a:pull&account=me#x: 401") == "GET https://r.example/v2/token: 401"


def _params(**extra):
    params = dict((name, spec.get("default")) for name, spec in _skopeo.argument_spec().items())
    params.update(extra)
    return params


def test_the_option_family_and_its_names():
    spec = _skopeo.argument_spec(retries=5)
    assert spec["retries"]["default"] == 5
    assert spec["validate_certs"]["aliases"] == ["tls_verify"] and spec["executable"]["aliases"] == ["skopeo_path"]
    assert spec["authfile"]["no_log"] is False
    assert "validate_certs" not in _skopeo.argument_spec(validate_certs=False)


@pytest.mark.parametrize("extra, message", [
    ({"parallel": 0}, "Option parallel must be 1 or more, not 0."),
    ({"retries": -1}, "Option retries must be 0 or more, not -1."),
    ({"retry_delay": -0.5}, "Option retry_delay must be 0 or more, not -0.5."),
    ({"authfile": "/nonexistent/auth.json"}, "Option authfile names /nonexistent/auth.json, which does not exist or is not a file."),
    ({"cert_dir": "/nonexistent/certs"}, "Option cert_dir names /nonexistent/certs, which does not exist or is not a directory."),
])
def test_option_errors_are_worded_alike(extra, message):
    assert _skopeo.option_problem(_params(**extra)) == message


def _fake_skopeo(tmp_path, version_line):
    path = tmp_path / "skopeo"
    path.write_text("#!/bin/sh\necho '%s'\n" % version_line)
    path.chmod(0o755)
    return str(path)


def test_locate_checks_the_version_once_in_one_place(tmp_path):
    assert _skopeo.locate(_params(executable=_fake_skopeo(tmp_path, "skopeo version 1.18.0")), None) == str(tmp_path / "skopeo")
    with pytest.raises(_skopeo.OptionError, match=r"^skopeo 1\.8\.2 at .* is older than 1\.9"):
        _skopeo.locate(_params(executable=_fake_skopeo(tmp_path, "skopeo version 1.8.2 commit: abc")), None)
    with pytest.raises(_skopeo.OptionError, match="does not tell its version"):
        _skopeo.locate(_params(executable=_fake_skopeo(tmp_path, "hello")), None)
    with pytest.raises(_skopeo.OptionError, match="^Option executable names /nonexistent/skopeo, which is not an executable file"):
        _skopeo.locate(_params(executable="/nonexistent/skopeo"), None)
    with pytest.raises(_skopeo.OptionError, match="not found in PATH; install the skopeo package"):
        _skopeo.locate(_params(), lambda name: None)


@pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo (the test command installs it)")
def test_the_real_skopeo_is_recent_enough():
    assert _skopeo.version(shutil.which("skopeo")) >= _skopeo.MIN_VERSION
