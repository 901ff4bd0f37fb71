"""Offline stand-in for the get-pip script that ``ansible-test --venv`` downloads.

ansible-test bootstraps pip into each fresh virtual environment by running a cached copy of
``get-pip.py`` from ``~/.ansible/test/cache/get_pip_<version>.py`` and only downloads one when the
cache is empty. The download host is not reachable from an offline build machine, so the test
command installs this script under that name. It installs pip from the interpreter's own bundled
wheel (ensurepip), then lets that pip install the exact version ansible-test asked for from the
configured package index.
"""

import ensurepip
import os
import subprocess
import sys


def main():
    ensurepip.bootstrap(upgrade=True)
    # ensurepip points PIP_CONFIG_FILE at os.devnull in this process; that would hide the machine's
    # pip configuration (index URL, CA bundle) from the pip run below.
    os.environ.pop("PIP_CONFIG_FILE", None)
    # get-pip.py accepts --no-setuptools/--no-wheel; plain pip install does not.
    args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))


if __name__ == "__main__":
    main()
