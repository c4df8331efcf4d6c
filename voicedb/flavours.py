"""The Chatterbox model families ("flavours") voicedb can speak with, and the settings of one synthesis.

Everything that differs between the English, multilingual and Turbo models lives in one row of
``FLAVOURS``, so the rest of the code asks a flavour what to do instead of comparing model names.
This module imports nothing heavy: the CLI reads it to build ``--model`` choices.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CheckpointError, VoiceDBError
from .streaming import TokenWindows


@dataclass(frozen=True)
class Flavour:
    """One Chatterbox model family: where its weights are and how it conditions on a voice."""

    name: str
    summary: str
    repo_id: str
    ve_file: str
    t3_file: str
    s3gen_file: str
    tokenizer_file: str
    prompt_seconds: int  # upstream ENC_COND_LEN / S3_SR
    prompt_tokens: int  # upstream T3Config.speech_cond_prompt_len
    min_seconds: float = 0.0  # a reference must be longer than this (Turbo: 5 s)
    multilingual: bool = False  # speaks the languages of ``languages()``, needs one named
    gpt2_t3: bool = False  # Turbo's GPT-2 T3: no CFG, no exaggeration, HF tokenizer directory
    meanflow_s3gen: bool = False  # Turbo's S3Gen decodes in 2 mean-flow steps
    strict_s3gen_weights: bool = True  # every S3Gen weight must be present in the checkpoint
    loudness_normalised_reference: bool = False  # upstream Turbo normalises the reference to -27 LUFS
    repetition_penalty: float = 1.2
    top_p: float = 1.0

    def check_language(self, language: str | None) -> str | None:
        """The language id to speak, validated: English models speak English only."""
        if not self.multilingual:
            if language and language.lower() != "en":
                raise VoiceDBError(
                    f"the {self.name} model speaks English only; use --model multilingual for {language!r}."
                )
            return None
        supported = languages()
        if not language or language.lower() not in supported:
            raise VoiceDBError(f"the multilingual model needs --language, one of: {', '.join(sorted(supported))}.")
        return language.lower()


FLAVOURS: dict[str, Flavour] = {
    flavour.name: flavour
    for flavour in (
        Flavour(
            name="english",
            summary="ChatterboxTTS (English)",
            repo_id="ResembleAI/chatterbox",
            ve_file="ve.safetensors",
            t3_file="t3_cfg.safetensors",
            s3gen_file="s3gen.safetensors",
            tokenizer_file="tokenizer.json",
            prompt_seconds=6,
            prompt_tokens=150,
        ),
        Flavour(
            name="multilingual",
            summary="ChatterboxMultilingualTTS (23 languages, needs --language)",
            repo_id="ResembleAI/chatterbox",
            ve_file="ve.pt",
            t3_file="t3_mtl23ls_v2.safetensors",
            s3gen_file="s3gen.pt",
            tokenizer_file="grapheme_mtl_merged_expanded_v1.json",
            prompt_seconds=6,
            prompt_tokens=150,
            multilingual=True,
            strict_s3gen_weights=False,
            repetition_penalty=2.0,
        ),
        Flavour(
            name="turbo",
            summary="ChatterboxTurboTTS (fast, English, reference > 5 s)",
            repo_id="ResembleAI/chatterbox-turbo",
            ve_file="ve.safetensors",
            t3_file="t3_turbo_v1.safetensors",
            s3gen_file="s3gen_meanflow.safetensors",
            tokenizer_file="tokenizer_config.json",
            prompt_seconds=15,
            prompt_tokens=375,
            min_seconds=5.0,
            gpt2_t3=True,
            meanflow_s3gen=True,
            strict_s3gen_weights=False,
            loudness_normalised_reference=True,
            top_p=0.95,
        ),
    )
}
DEFAULT_FLAVOUR = "english"


def flavour_named(name: str) -> Flavour:
    try:
        return FLAVOURS[name]
    except KeyError:
        raise CheckpointError(f"unknown model {name!r}; choose one of {', '.join(FLAVOURS)}.") from None


#: Upstream's ``chatterbox.mtl_tts.SUPPORTED_LANGUAGES``, copied so that naming a language never imports
#: chatterbox (a test keeps the copy equal to upstream's).
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "fi": "Finnish",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "ms": "Malay",
    "nl": "Dutch",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
    "sv": "Swedish",
    "sw": "Swahili",
    "tr": "Turkish",
    "zh": "Chinese",
}
MULTILINGUAL_LANGUAGES = frozenset(LANGUAGE_NAMES)


def languages() -> frozenset[str]:
    """Language ids of the multilingual model."""
    return MULTILINGUAL_LANGUAGES


@dataclass(frozen=True)
class SynthesisSettings:
    """Sampling settings of one ``speak`` call; defaults are upstream's ``generate`` defaults.

    ``max_tokens`` caps the speech tokens of each text chunk (25 tokens are about one second).
    ``windows`` changes when audio is rendered, not what T3 samples: the same seed draws the same tokens.
    """

    exaggeration: float = 0.5
    cfg_weight: float = 0.5
    temperature: float = 0.8
    max_tokens: int = 1000
    language: str | None = None
    repetition_penalty: float | None = None  # None: the flavour's upstream default
    min_p: float = 0.05
    top_p: float | None = None  # None: the flavour's upstream default
    #: Render speech tokens in these windows while T3 generates them (``voicedb.streaming``); None: each
    #: chunk whole once T3 is done, as upstream.
    windows: TokenWindows | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_tokens <= 1000:
            raise VoiceDBError("max_tokens must be between 1 and 1000.")
        if self.temperature <= 0:
            raise VoiceDBError("temperature must be above 0.")
        if self.exaggeration < 0 or self.cfg_weight < 0:
            raise VoiceDBError("exaggeration and cfg_weight cannot be negative.")

    def repetition_penalty_for(self, flavour: Flavour) -> float:
        return self.repetition_penalty if self.repetition_penalty is not None else flavour.repetition_penalty

    def top_p_for(self, flavour: Flavour) -> float:
        return self.top_p if self.top_p is not None else flavour.top_p
