"""Every error a user can cause, each with the one-line message they will see.

The CLI turns any ``VoiceDBError`` into that line on stderr and the class's ``exit_code``; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class VoiceDBError(Exception):
    """Base class: a problem the user can fix, described in one plain sentence."""

    exit_code = 2


class NoMatch(VoiceDBError):
    """Matching found no stored voice at or above the threshold: an unknown speaker.

    ``nearest`` holds the best-scoring voices anyway, best first, for callers that want to show them.
    """

    exit_code = 1

    def __init__(self, message: str, nearest: list | None = None) -> None:
        super().__init__(message)
        self.nearest = nearest or []


class AudioError(VoiceDBError):
    """A clip is missing, unreadable, not audio, silent or too short."""


class NotAudio(AudioError):
    """The data is not audio in any format we can decode (the server answers 415)."""


class DuplicateClip(VoiceDBError):
    """The exact same recording (by content hash) is already enrolled."""


class VoiceNotFound(VoiceDBError):
    """No voice has the given id or name."""


class AmbiguousVoice(VoiceDBError):
    """An id prefix fits more than one voice."""


class InvalidBlend(VoiceDBError):
    """A voice blend that cannot be read or made (``a(2)+b(1)``)."""


class NameTaken(VoiceDBError):
    """Voice names are unique; this one is already used."""


class InvalidName(VoiceDBError):
    """A voice name that could not be typed back on a command line."""


class NoClips(VoiceDBError):
    """A voice without reference audio (imported as an embedding alone) cannot derive conditionals to speak."""


class CheckpointError(VoiceDBError):
    """Model weights are missing, corrupt or of the wrong kind."""


class ForeignWeights(CheckpointError):
    """A source served other weights than the official file: nothing is kept, and no other source is tried."""


class LibraryError(VoiceDBError):
    """The library directory cannot be used: not writable, corrupt, or from a newer voicedb."""


class QualityError(VoiceDBError):
    """A clip fails the enrollment quality gate and ``--strict`` was asked for."""


class ImportRejected(VoiceDBError):
    """An imported conditionals file or bundle is malformed or unsafe; nothing was changed."""
