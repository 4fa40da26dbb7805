"""setpoint: a GitOps agent for hosts.

Git holds the desired state; the agent pulls it, compares it with the target,
corrects the difference (drift) and records what it did in a journal.
The public entry point is the ``setpoint`` command (:mod:`setpoint.cli`).

Importing the package checks the Python version first (:func:`python_problem`):
pip enforces ``requires-python`` at install time, but a checkout run with
``PYTHONPATH=src`` or a venv made by an older interpreter would otherwise fail
later with a bare ``TypeError`` from ``tarfile``, in the middle of a pass.
"""

from __future__ import annotations

import sys

__version__ = "0.1.0"

MIN_PYTHON = (3, 11, 4)


def python_problem(version: tuple[int, ...] | None = None) -> str | None:
    """Why this Python cannot run setpoint, or None when it can.

    Reads ``sys.version_info`` at call time (not at definition), so a caller or a
    test that replaces it sees its own value.
    """
    numbers = tuple(sys.version_info[:3] if version is None else version[:3])
    if numbers >= MIN_PYTHON:
        return None
    this = ".".join(str(n) for n in numbers)
    return (
        f"setpoint needs Python 3.11.4 or newer (this is {this}): tarfile's extraction "
        "filters (tarfile.data_filter, extractall(filter=...)), which keep a release archive "
        "or an exported Git tree from writing outside its directory, came in 3.11.4. "
        "Install a newer Python (e.g. python3.12) and re-create the virtualenv "
        "(rm -rf .venv; PYTHON=python3.12 scripts/setup.sh)."
    )


if (_problem := python_problem()) is not None:
    # An application, not a library: a clear line and exit status 1 beat a traceback
    # from the console script, which imports this package before any of our code runs.
    raise SystemExit(_problem)
