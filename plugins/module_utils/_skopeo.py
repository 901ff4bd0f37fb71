# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run skopeo: build argument lists, retry transient failures, name permanent ones.

Plain Python with no Ansible dependency, shared by ``image_download`` and ``image_upload``.
Secrets never reach a command line: credentials come from an auth file (``--authfile``).

Typical use::

    tool = Skopeo("/usr/bin/skopeo", retries=5, retry_delay=2.0)
    argv = tool.copy_argv("docker://quay.io/a/b@sha256:...", "oci:/store/images/...",
                          src=RegistryOptions(authfile="/root/auth.json"),
                          dest_shared_blob_dir="/store/blobs")
    result = tool.run(argv, what="quay.io/a/b@sha256:...")   # raises SkopeoError
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import time

TRANSIENT = "transient"
PERMANENT = "permanent"

# (pattern, cause) in the order they are tried. Permanent causes first: a 401 page can
# mention EOF, but retrying it never helps.
_PERMANENT_PATTERNS = (
    (r"x509:|certificate signed by unknown authority|certificate is not valid|tls: failed to verify|certificate has expired",
     "TLS certificate verification failed (x509): the registry's certificate is not trusted; give its CA with cert_dir "
     "or add it to the system trust store"),
    (r"unauthorized|authentication required|status code:? ?401|\b401 unauthorized|invalid username/password|incorrect username or password",
     "authentication failed (401 unauthorized): check the credentials for this registry in the auth file"),
    (r"permission denied",
     "permission denied on a local file or directory"),
    (r"requested access to the resource is denied|denied:|forbidden|status code:? ?403|\b403 forbidden",
     "access denied (403): the credentials in the auth file may not read this repository"),
    (r"manifest unknown|manifest .*not found|reading manifest .*: .*not found|image not known",
     "manifest unknown: the image, tag or digest does not exist in the registry"),
    (r"name unknown|repository name not known|repository .* not found|name_unknown",
     "repository unknown: the repository does not exist in the registry"),
    (r"no such host",
     "the registry host name does not resolve (no such host)"),
    (r"schema ?1|manifest\.v1\+prettyjws",
     "docker schema 1 manifests are not supported (they have no stable digest)"),
    (r"no space left on device",
     "no space left on device"),
    (r"invalid reference format|invalid argument|unknown flag|unknown shorthand flag",
     "skopeo rejected its arguments"),
)

_TRANSIENT_PATTERNS = (
    (r"toomanyrequests|too many requests|status code:? ?429|\b429\b", "rate limited by the registry (429 too many requests)"),
    (r"(?:status(?: code)?:?|statuscode:|http status:?|status code from registry)\s*5\d\d"
     r"|internal server error|bad gateway|service unavailable|gateway timeout",
     "registry server error (5xx)"),
    (r"connection reset", "connection reset by the registry"),
    (r"connection refused", "connection refused by the registry"),
    (r"tls handshake timeout|i/o timeout|timed out|timeout|deadline exceeded", "timeout talking to the registry"),
    (r"\beof\b|unexpected eof|broken pipe|connection closed|closed idle connection|use of closed network connection"
     r"|server closed the connection|http2: .* reset|transport connection broken",
     "connection closed unexpectedly (EOF)"),
    (r"temporary failure|network is unreachable|no route to host", "network unreachable"),
)
# skopeo itself crashed (a Go runtime panic, seen once under load with skopeo 1.9.3): a new process
# usually goes through, and the retry budget bounds a crash that repeats. Tried before the other
# patterns, which a stack trace could match by chance.
_CRASH = re.compile(r"^(?:panic: |fatal error: |goroutine \d+ \[)", re.MULTILINE)
_CRASH_CAUSE = "skopeo crashed (a Go runtime panic)"

_COMPILED = [(re.compile(p, re.IGNORECASE), c, PERMANENT) for p, c in _PERMANENT_PATTERNS] + \
    [(re.compile(p, re.IGNORECASE), c, TRANSIENT) for p, c in _TRANSIENT_PATTERNS]


_MANIFEST_FALLBACK = re.compile(r"must be converted to type .* but we cannot modify it", re.IGNORECASE)


def classify_error(stderr):
    """Return ``(kind, cause)`` for skopeo's stderr: kind is TRANSIENT or PERMANENT.

    Unknown errors are permanent: retrying something not understood only hides it longer.
    """
    # --debug output lists every manifest MIME type skopeo knows (schema 1 included) and every
    # request: only the other lines say what went wrong.
    lines = (stderr or "").splitlines()
    text = "\n".join(line for line in lines if "level=debug" not in line)
    if _CRASH.search(text):
        return TRANSIENT, _CRASH_CAUSE
    for regex, cause, kind in _COMPILED:
        if regex.search(text):
            return kind, cause
    if _MANIFEST_FALLBACK.search(text):
        # Writing the manifest failed, and with preserved digests skopeo has no other type to try:
        # why the write failed is only in the debug output (when there is one).
        debug = "\n".join(line for line in lines if "level=debug" in line)
        for regex, cause, kind in _COMPILED:
            if kind == TRANSIENT and regex.search(debug):
                return kind, cause
    return PERMANENT, "skopeo failed"


def last_error_line(stderr, limit=400):
    """The most useful line of skopeo's stderr (its fatal message), shortened."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    if not lines:
        return ""
    # a crash: its own first line says what happened, not the last frame of the stack
    crash = [line for line in lines if line.startswith(("panic: ", "fatal error: "))]
    lines = crash[:1] or lines
    for line in reversed(lines):
        if "level=fatal" in line or line.startswith("Error") or "FATA" in line:
            chosen = line
            break
    else:
        chosen = lines[-1]
    match = re.search(r'msg="(.*)"\s*$', chosen)
    if match:
        chosen = match.group(1).replace('\\"', '"')
    return chosen if len(chosen) <= limit else chosen[:limit] + "..."


def backoff_delay(attempt, base, cap=60.0, rng=None):
    """Delay before retry number ``attempt`` (1-based): exponential with jitter.

    ``base * 2**(attempt-1)`` capped at ``cap``, then a uniform draw in its upper half, so
    parallel workers that failed together do not retry together.
    """
    if base <= 0:
        return 0.0
    rng = rng or random
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    return ceiling / 2.0 + rng.uniform(0, ceiling / 2.0)


class SkopeoError(Exception):
    """A skopeo call that failed for good (permanent error, or retries exhausted)."""

    def __init__(self, what, kind, cause, rc, stderr, argv, attempts):
        self.what = what
        self.kind = kind
        self.cause = cause
        self.rc = rc
        self.stderr = stderr
        self.argv = argv
        self.attempts = attempts
        detail = last_error_line(stderr)
        if kind == TRANSIENT:
            msg = "%s: %s, still failing after %d attempts" % (what, cause, attempts)
        else:
            msg = "%s: %s" % (what, cause)
        if detail:
            msg += " (skopeo: %s)" % detail
        self.message = msg
        super(SkopeoError, self).__init__(msg)


class SkopeoResult(object):
    def __init__(self, stdout, stderr, attempts):
        self.stdout = stdout
        self.stderr = stderr
        self.attempts = attempts

    @property
    def retries(self):
        return self.attempts - 1


class RegistryOptions(object):
    """Per-side registry options: auth file, TLS verification and a certificate directory."""

    def __init__(self, authfile=None, tls_verify=True, cert_dir=None):
        self.authfile = authfile
        self.tls_verify = tls_verify
        self.cert_dir = cert_dir

    def args(self, prefix=""):
        """Flags for one side: ``prefix`` is ``""`` (inspect), ``"src-"`` or ``"dest-"`` (copy)."""
        argv = []
        if self.authfile:
            argv.append("--%sauthfile=%s" % (prefix, self.authfile))
        if self.tls_verify is not None:
            argv.append("--%stls-verify=%s" % (prefix, "true" if self.tls_verify else "false"))
        if self.cert_dir:
            argv.append("--%scert-dir=%s" % (prefix, self.cert_dir))
        return argv


def subprocess_runner(argv, env=None):
    """Run ``argv`` and return ``(rc, stdout_bytes, stderr_text)``. Thread safe."""
    # Deliberately not AnsibleModule.run_command (see module_runner): a manifest must arrive whole,
    # and worker threads must not share the module's os.environ updates.
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, check=False)  # pylint: disable=ansible-bad-function
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


def module_runner(module):
    """The runner for a module's worker threads: ``(rc, stdout_bytes, stderr_text)``.

    Not ``AnsibleModule.run_command``: its read loop stops when a one-second ``select`` times out
    and the process has exited meanwhile, dropping output written in that instant (seen under
    load as an empty manifest with rc 0). ``subprocess.run`` reads both pipes to their end.
    """
    def run(argv, env=None):
        environ = dict(os.environ)
        environ.update(env or {})
        return subprocess_runner(argv, env=environ)
    return run


class Skopeo(object):
    """One skopeo binary with a retry policy.

    ``runner(argv, env)`` returns ``(rc, stdout_bytes, stderr_text)``; the default uses
    :mod:`subprocess` (safe from worker threads). ``sleep`` and ``rng`` are injectable so the
    retry loop can be exercised without waiting.
    """

    def __init__(self, binary, retries=5, retry_delay=2.0, max_delay=60.0, runner=None, sleep=None, rng=None):
        self.binary = binary
        self.retries = max(0, int(retries))
        self.retry_delay = float(retry_delay)
        self.max_delay = float(max_delay)
        self.runner = runner
        self.sleep = sleep or time.sleep
        self.rng = rng or random.Random()
        self.env = dict(os.environ, LC_ALL="C", LANG="C")

    # argv builders -------------------------------------------------------------------

    def inspect_argv(self, ref, options=None, raw=True, config=False, transport="docker://", shared_blob_dir=None):
        argv = [self.binary, "inspect", "--retry-times=0"]
        if raw:
            argv.append("--raw")
        if config:
            argv.append("--config")
        if shared_blob_dir:
            argv.append("--shared-blob-dir=%s" % shared_blob_dir)
        if options is not None and transport == "docker://":
            argv.extend(options.args(""))
        argv.append(transport + ref)
        return argv

    def copy_argv(self, src, dest, src_options=None, dest_options=None, all_images=True, preserve_digests=True,
                  src_shared_blob_dir=None, dest_shared_blob_dir=None, extra=None):
        """``skopeo copy`` for full transport:reference strings ``src`` and ``dest``."""
        argv = [self.binary, "copy", "--retry-times=0", "--quiet"]
        if all_images:
            argv.append("--all")
        if preserve_digests:
            argv.append("--preserve-digests")
        if src_options is not None:
            argv.extend(src_options.args("src-"))
        if dest_options is not None:
            argv.extend(dest_options.args("dest-"))
        if src_shared_blob_dir:
            argv.append("--src-shared-blob-dir=%s" % src_shared_blob_dir)
        if dest_shared_blob_dir:
            argv.append("--dest-shared-blob-dir=%s" % dest_shared_blob_dir)
        argv.extend(extra or [])
        argv.extend([src, dest])
        return argv

    # running -------------------------------------------------------------------------

    def _run_once(self, argv):
        runner = self.runner or subprocess_runner
        return runner(argv, env=self.env)

    def run(self, argv, what, on_retry=None, progressed=None):
        """Run ``argv``; retry transient failures with backoff; raise :class:`SkopeoError`.

        ``what`` names the image in messages. ``on_retry(attempt, cause, delay)`` is called
        before each sleep (for progress reporting). ``progressed(stderr)`` tells whether a failed
        attempt still moved the work forward (a push past a blob no earlier attempt had reached, a
        copy after which fewer blobs are missing): such an attempt does not use up a retry and the
        backoff starts over, so a long copy over a link that keeps breaking goes on as long as each
        try gets further. It must only answer true a finite number of times (at most once per blob).
        """
        attempt = 0
        fruitless = 0
        while True:
            attempt += 1
            try:
                rc, out, err = self._run_once(argv)
            except OSError as exc:
                raise SkopeoError(what, PERMANENT, "cannot run %s: %s" % (argv[0], exc), None, "", argv, attempt)
            if rc == 0:
                return SkopeoResult(out, err, attempt)
            kind, cause = classify_error(err)
            if kind == TRANSIENT and progressed is not None and progressed(err):
                fruitless = 0
            else:
                fruitless += 1
            if kind == PERMANENT or fruitless > self.retries:
                raise SkopeoError(what, kind, cause, rc, err, argv, attempt)
            delay = backoff_delay(max(1, fruitless), self.retry_delay, self.max_delay, self.rng)
            if on_retry is not None:
                on_retry(attempt, cause, delay)
            self.sleep(delay)

    def inspect_raw(self, ref, options=None, config=False, what=None):
        """Raw bytes of the manifest (or with ``config`` the config blob) of ``docker://ref``."""
        return self.run(self.inspect_argv(ref, options, raw=True, config=config), what or ref)
