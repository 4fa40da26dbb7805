"""Build the example release archive reproducibly and print its sha256.

    python examples/releases/build.py   # writes examples/apps/hello/files/hello-<VERSION>.tar.gz

The archive holds ``hello/VERSION`` and ``hello/server.py`` with fixed owners and
times, so the same sources always give the same bytes (and the same sha256, which
the ``Release`` in examples/apps/hello/service.yaml declares).
"""

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

here = Path(__file__).resolve().parent
src = here / "hello"
version = (src / "VERSION").read_text().strip()
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
    for name in ("VERSION", "server.py"):
        data = (src / name).read_bytes()
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tf.addfile(info, io.BytesIO(data))
out = here.parent / "apps/hello/files" / f"hello-{version}.tar.gz"
out.write_bytes(gzip.compress(raw.getvalue(), mtime=0))
print(out, hashlib.sha256(out.read_bytes()).hexdigest())
