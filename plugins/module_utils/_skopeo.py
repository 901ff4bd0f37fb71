# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run skopeo: the shared options, the binary, argument lists, retries and error messages.

Plain Python with no Ansible dependency (a module passes its ``params`` and ``get_bin_path``),
shared by every module that runs skopeo (``image_download``, ``image_upload``, ``mirror_check``):

- :func:`argument_spec` is the option family they share (documented by the
  ``airgap.microshift.skopeo`` doc fragment): ``authfile``, ``cert_dir``, ``validate_certs``,
  ``parallel``, ``retries``, ``retry_delay`` and ``executable``; :func:`option_problem` checks it
  and words every option error the same way; :func:`locate` finds the binary and checks its
  version once;
- :class:`Skopeo` builds argument lists and runs them: transient failures are retried with
  backoff, permanent ones named at once, and every failure is one :class:`SkopeoError` whose
  message keeps skopeo's own reason (URLs shortened, tokens dropped).

Secrets never reach a command line: credentials come from an auth file (``--authfile``).

Typical use::

    tool = Skopeo("/usr/bin/skopeo", retries=5, retry_delay=2.0)
    argv = tool.copy_argv("docker://quay.io/a/b@sha256:...", "oci:/store/images/...",
                          src_options=RegistryOptions(authfile="/root/auth.json"),
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
# The oldest skopeo the collection is tested with (RHEL 9 ships newer ones).
MIN_VERSION = (1, 9)

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
    (r"digest did not match|digest invalid|did not match uploaded content|digest mismatch",
     "a blob does not match its digest"),
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
_DIGEST_MISMATCH = re.compile(r"Digest did not match, expected (sha256:[0-9a-f]{64}), got (sha256:[0-9a-f]{64})")
_URL = re.compile(r"(?P<scheme>https?)://(?P<host>[^/\s\"?#]+)(?P<path>[^\s\"?#]*)(?P<rest>[?#][^\s\"]*)?")
_LONG_SEGMENT = re.compile(r"[^/]{25,}")


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
    mismatch = _DIGEST_MISMATCH.search(text)
    if mismatch:
        return PERMANENT, "blob %s does not match its digest (its content hashes to %s)" % mismatch.groups()
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


def shorten_urls(text):
    """``text`` with every URL cut to its scheme, host and path: queries and fragments (upload
    state, tokens) go, and long path segments (upload ids) keep their first 8 characters."""
    def short(match):
        path = _LONG_SEGMENT.sub(lambda seg: seg.group(0)[:8] + "...", match.group("path"))
        tail = match.group(0)[-1] if match.group("rest") and match.group(0)[-1] in ":,;" else ""
        return "%s://%s%s%s" % (match.group("scheme"), match.group("host"), path, tail)
    return _URL.sub(short, text)


def condense(text, limit=400):
    """One line of at most ``limit`` characters that keeps the end of ``text``.

    Go wraps errors as ``outer: inner: cause``, so the cause is at the end: a long message keeps
    its first words and its end, the middle goes.
    """
    text = " ".join(shorten_urls(text).split())
    if len(text) <= limit:
        return text
    head = limit // 3
    return text[:head] + " ... " + text[-(limit - head - 5):]


def fatal_message(stderr):
    """skopeo's fatal message: the ``msg="..."`` of its last error line (unescaped), or its last line."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip() and "level=debug" not in line]
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
    return chosen


def last_error_line(stderr, limit=400):
    """The most useful line of skopeo's stderr (its fatal message), condensed (:func:`condense`)."""
    return condense(fatal_message(stderr), limit)


def explain_error(stderr):
    """``(kind, cause, detail)`` of a failed skopeo run: :func:`classify_error` and the condensed fatal line."""
    kind, cause = classify_error(stderr)
    return kind, cause, last_error_line(stderr)


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
    """A skopeo call that failed for good (permanent error, or retries exhausted).

    ``message`` is ``<what>: <reason>``; ``reason`` is the cause, the attempts when a transient
    error outlasted the retries, and skopeo's own words (``detail``) when they add to the cause.
    """

    def __init__(self, what, kind, cause, rc, stderr, argv, attempts, detail=None):
        self.what = what
        self.kind = kind
        self.cause = cause
        self.rc = rc
        self.stderr = stderr
        self.argv = argv
        self.attempts = attempts
        self.detail = last_error_line(stderr) if detail is None else detail
        reason = cause
        if kind == TRANSIENT:
            reason += ", still failing after %d attempts" % attempts
        if self.detail:
            reason += " (skopeo: %s)" % self.detail
        self.reason = reason
        self.message = "%s: %s" % (what, reason)
        super().__init__(self.message)


class SkopeoResult:
    """What a successful run gave: ``stdout`` (bytes), ``stderr`` and the ``attempts`` it took."""

    def __init__(self, stdout, stderr, attempts):
        self.stdout = stdout
        self.stderr = stderr
        self.attempts = attempts

    @property
    def retries(self):
        return self.attempts - 1


class RegistryOptions:
    """Per-side registry options: auth file, TLS verification and a certificate directory.

    ``tls_verify`` None passes no flag: the host's containers configuration decides.
    """

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
    """Run ``argv`` and return ``(rc, stdout_bytes, stderr_text)``. Thread safe.

    Not ``AnsibleModule.run_command``: its read loop stops when a one-second ``select`` times out
    and the process has exited meanwhile, dropping output written in that instant (seen under
    load as an empty manifest with rc 0), and worker threads must not share the module's
    ``os.environ`` updates. ``subprocess.run`` reads both pipes to their end.
    """
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, check=False)  # pylint: disable=ansible-bad-function
    return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")


def version(binary, runner=None):
    """``(major, minor, patch)`` of ``binary --version``, or None when it does not say."""
    try:
        rc, out, err = (runner or subprocess_runner)([binary, "--version"], env=dict(os.environ, LC_ALL="C", LANG="C"))
    except OSError:
        return None
    match = re.search(r"version\s+v?([0-9]+)\.([0-9]+)(?:\.([0-9]+))?", out.decode("utf-8", "replace") if isinstance(out, bytes) else out)
    if rc != 0 or not match:
        return None
    return tuple(int(part or 0) for part in match.groups())


# The option family ------------------------------------------------------------------------


def argument_spec(retries=3, validate_certs=True):
    """The options every module that runs skopeo has (doc fragment ``airgap.microshift.skopeo``).

    ``retries`` is the module's default; ``validate_certs`` False leaves TLS verification to the
    host's containers configuration (no option, no flag).
    """
    spec = dict(
        authfile=dict(type="path", no_log=False),
        cert_dir=dict(type="path"),
        parallel=dict(type="int", default=4),
        retries=dict(type="int", default=retries),
        retry_delay=dict(type="float", default=2.0),
        executable=dict(type="path", aliases=["skopeo_path"]),
    )
    if validate_certs:
        spec["validate_certs"] = dict(type="bool", default=True, aliases=["tls_verify"])
    return spec


def at_least(name, value, low):
    """The option error for ``value`` below ``low``, or None: every module words them this way."""
    if value is None or value >= low:
        return None
    return "Option %s must be %s or more, not %s." % (name, low, value)


def option_problem(params):
    """The first problem with the shared options, as one sentence naming the option, or None."""
    problem = (at_least("parallel", params["parallel"], 1) or at_least("retries", params["retries"], 0)
               or at_least("retry_delay", params["retry_delay"], 0))
    if problem:
        return problem
    if params.get("authfile") and not os.path.isfile(params["authfile"]):
        return "Option authfile names %s, which does not exist or is not a file." % params["authfile"]
    if params.get("cert_dir") and not os.path.isdir(params["cert_dir"]):
        return "Option cert_dir names %s, which does not exist or is not a directory." % params["cert_dir"]
    return None


def insecure_warning(params, what):
    """The warning for ``validate_certs: false`` (``what`` names the registries), or None."""
    if params.get("validate_certs", True):
        return None
    return ("validate_certs is false: the TLS certificates of %s are not verified, so anyone on the path can read and change "
            "the images; use it only with a test registry." % what)


class OptionError(Exception):
    """An option (or the skopeo it names) that cannot be used; the message is one sentence."""


def locate(params, get_bin_path, runner=None):
    """The skopeo binary: the ``executable`` option or ``skopeo`` on ``PATH``, at least :data:`MIN_VERSION`.

    ``get_bin_path`` is ``AnsibleModule.get_bin_path``. Raises :class:`OptionError`.
    """
    binary = params.get("executable")
    if binary:
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise OptionError("Option executable names %s, which is not an executable file." % binary)
    else:
        binary = get_bin_path("skopeo")
        if not binary:
            raise OptionError("skopeo is required on this host and was not found in PATH; install the skopeo package "
                              "(or name the binary with the executable option).")
    found = version(binary, runner)
    minimum = ".".join(str(part) for part in MIN_VERSION)
    if found is None:
        raise OptionError("%s does not tell its version (skopeo --version); the collection needs skopeo %s or later." % (binary, minimum))
    if found[:len(MIN_VERSION)] < MIN_VERSION:
        raise OptionError("skopeo %s at %s is older than %s, the oldest version the collection supports; update skopeo."
                          % (".".join(str(part) for part in found), binary, minimum))
    return binary


def registry_options(params):
    """The :class:`RegistryOptions` of the shared options (no TLS flag where the module has no ``validate_certs``)."""
    return RegistryOptions(authfile=params.get("authfile"), tls_verify=params.get("validate_certs"), cert_dir=params.get("cert_dir"))


class Skopeo:
    """One skopeo binary with a retry policy.

    ``runner(argv, env)`` returns ``(rc, stdout_bytes, stderr_text)``; the default uses
    :mod:`subprocess` (safe from worker threads). ``sleep`` and ``rng`` are injectable so the
    retry loop can be exercised without waiting. ``global_args`` go before the subcommand of
    every command (``--registries-conf=...``, ``--command-timeout=...``).
    """

    def __init__(self, binary, retries=5, retry_delay=2.0, max_delay=60.0, runner=None, sleep=None, rng=None, global_args=None):
        self.binary = binary
        self.retries = max(0, int(retries))
        self.retry_delay = float(retry_delay)
        self.max_delay = float(max_delay)
        self.runner = runner
        self.sleep = sleep or time.sleep
        self.rng = rng or random.Random()
        self.global_args = list(global_args or [])
        self.env = dict(os.environ, LC_ALL="C", LANG="C")

    @classmethod
    def from_params(cls, binary, params, runner=None, global_args=None):
        """The tool with the retry policy of a module's shared options."""
        return cls(binary, retries=params["retries"], retry_delay=params["retry_delay"], runner=runner, global_args=global_args)

    # argv builders -------------------------------------------------------------------

    def inspect_argv(self, ref, options=None, raw=True, config=False, transport="docker://", shared_blob_dir=None):
        argv = [self.binary] + self.global_args + ["inspect", "--retry-times=0"]
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
        argv = [self.binary] + self.global_args + ["copy", "--retry-times=0", "--quiet"]
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

    def run(self, argv, what, on_retry=None, progressed=None, explain=explain_error):
        """Run ``argv``; retry transient failures with backoff; raise :class:`SkopeoError`.

        ``what`` names the image in messages. ``explain(stderr)`` gives ``(kind, cause, detail)``
        of a failure (:func:`explain_error` unless the caller reads skopeo's words its own way).
        ``on_retry(attempt, cause, delay)`` is called
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
            kind, cause, detail = explain(err)
            if kind == TRANSIENT and progressed is not None and progressed(err):
                fruitless = 0
            else:
                fruitless += 1
            if kind == PERMANENT or fruitless > self.retries:
                raise SkopeoError(what, kind, cause, rc, err, argv, attempt, detail)
            delay = backoff_delay(max(1, fruitless), self.retry_delay, self.max_delay, self.rng)
            if on_retry is not None:
                on_retry(attempt, cause, delay)
            self.sleep(delay)

    def inspect_raw(self, ref, options=None, config=False, what=None):
        """Raw bytes of the manifest (or with ``config`` the config blob) of ``docker://ref``."""
        return self.run(self.inspect_argv(ref, options, raw=True, config=config), what or ref)
