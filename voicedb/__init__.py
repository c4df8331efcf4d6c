"""voicedb: a voice library for Chatterbox TTS.

>>> from voicedb import VoiceDB
>>> db = VoiceDB()                       # doctest: +SKIP
>>> db.add(["alice.wav"], name="alice")  # doctest: +SKIP
"""

from .batching import Batcher
from .errors import NoMatch, VoiceDBError
from .flavours import SynthesisSettings
from .library import VoiceDB
from .records import AddResult, Match, Problem, SpeakResult, Voice
from .streaming import TokenWindows

__all__ = [
    "VoiceDB",
    "Voice",
    "Match",
    "AddResult",
    "SpeakResult",
    "Problem",
    "SynthesisSettings",
    "TokenWindows",
    "Batcher",
    "VoiceDBError",
    "NoMatch",
]
