"""``ems ingest`` with disk faults taken from a control file: the chaos test's ingestor process.

    python tests/chaos_ingest.py DISK_ROOT CONTROL_FILE ingest --broker ... --store DISK_ROOT/store ...

Writes below DISK_ROOT fail as the control file says (``full``: ENOSPC, ``read_only``: EROFS,
empty: fine); see ``tests/disk_faults.py``. Everything else is the real ``ems`` command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from disk_faults import DiskFaults

if __name__ == "__main__":
    root, control, *args = sys.argv[1:]
    DiskFaults(Path(root), control=Path(control)).install()
    from ems.cli import main

    sys.exit(main(args))
