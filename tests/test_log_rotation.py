"""Log rotation under a service that keeps writing: no line may be lost.

``service_proc.rotate`` copies the head of ``output.log`` to ``.1`` and cuts exactly
that head out of the file (the process keeps its O_APPEND descriptor), so whatever the
service writes meanwhile stays in ``output.log``; copy-truncate lost it.
``tests/test_service.py`` covers rotation with a writer that pauses at each rotation;
this test keeps writing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setpoint.providers.services.service_proc import log_files, rotate

LINES = 50_000
WRITER = f"import os\nfor i in range({LINES}):\n    os.write(1, b'line-%d\\n' % i)\n"


def test_rotation_under_a_continuous_writer_loses_no_line(tmp_path: Path) -> None:
    log = tmp_path / "services/chatty/output.log"
    log.parent.mkdir(parents=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        writer = subprocess.Popen([sys.executable, "-c", WRITER], stdout=fd)
    finally:
        os.close(fd)
    rotations = 0
    while writer.poll() is None:  # the supervisor's loop, without its 0.5 s pause
        rotations += rotate(log, 16384, 500)
    assert rotations > 1
    got = "".join(p.read_text() for p in log_files(tmp_path, "chatty")).splitlines()
    assert got == [f"line-{i}" for i in range(LINES)]
