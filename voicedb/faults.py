"""Named crash points, so tests can kill voicedb at exact moments of a write.

``VOICEDB_CRASH_AT=<name>`` makes the process SIGKILL itself when it reaches ``crash_point(<name>)``:
no cleanup handlers run, exactly as with a power cut or ``kill -9``. Unset, a crash point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "VOICEDB_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
