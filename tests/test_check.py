"""``voicedb check`` finds every inconsistency and ``--repair`` fixes it from SQLite and the kept audio."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import list_json, run, run_fails


def add(clip: Path, name: str, *extra: str) -> str:
    result = run("add", str(clip), "--name", name, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["id"]


def test_a_healthy_library_checks_clean(home: Path, speakers):
    add(next(iter(speakers.values()))[0], "alice", "--no-conditionals")
    result = run("check")
    assert result.exit_code == 0 and "library is consistent" in result.stdout


def test_missing_index_and_orphan_files_are_reported_then_repaired(home: Path, speakers):
    add(next(iter(speakers.values()))[0], "alice", "--no-conditionals")
    (home / "index.faiss").unlink()
    (home / "clips" / "deadbeef.wav").write_bytes(b"left by a crash")
    (home / "clips" / ".x.wav.abc.voicedb-tmp").write_bytes(b"half written")
    report = run("check", "--json")
    assert report.exit_code == 1
    kinds = sorted(p["kind"] for p in json.loads(report.stdout))
    assert kinds == ["index", "orphan-file", "temp-file"]
    repaired = run("check", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert run("check").exit_code == 0
    assert not (home / "clips" / "deadbeef.wav").exists()
    assert [v["name"] for v in list_json()] == ["alice"]


def test_a_missing_kept_clip_is_reported_and_the_voice_is_never_deleted(home: Path, speakers):
    add(next(iter(speakers.values()))[0], "alice", "--no-conditionals")
    next((home / "clips").iterdir()).unlink()
    result = run("check", "--repair")
    assert result.exit_code == 1 and "is missing" in result.stdout
    assert [v["name"] for v in list_json()] == ["alice"]


def test_embeddings_from_another_encoder_are_refused_then_re_embedded_by_repair(
    home: Path, speakers, checkpoint: Path, tmp_path: Path
):
    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-checkpoint"
    other.mkdir()
    for name in ("t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json", "campplus_cn_en_common.pt"):
        (other / name).symlink_to(checkpoint / name)
    weights = load_file(str(checkpoint / "ve.safetensors"))
    weights["proj.bias"] = weights["proj.bias"] + 0.01 * torch.ones_like(weights["proj.bias"])
    save_file(weights, str(other / "ve.safetensors"))

    clip = next(iter(speakers.values()))[0]
    add(clip, "alice", "--no-conditionals")
    line = run_fails("--checkpoint", str(other), "match", str(clip))
    assert "another voice-encoder checkpoint" in line
    repaired = run("--checkpoint", str(other), "check", "--repair")
    assert repaired.exit_code == 0 and "another voice-encoder checkpoint" in repaired.stdout
    hits = json.loads(run("--checkpoint", str(other), "match", str(clip), "--json").stdout)["matches"]
    assert hits[0]["name"] == "alice" and hits[0]["score"] > 0.99


def test_an_index_holding_other_voices_is_reported_and_rebuilt(home: Path, speakers):
    from voicedb import VoiceDB
    from voicedb.index import new_index

    clips = [group[0] for group in list(speakers.values())[:2]]
    add(clips[0], "alice", "--no-conditionals")
    add(clips[1], "bob", "--no-conditionals")
    db = VoiceDB()
    with db.context.store.session() as session:
        pks, vectors = db.context.store.all_vectors(session)
        generation = db.context.store.generation(session)
    matcher = db.matcher()
    db.context.index.files.save(new_index(pks + 100, vectors), generation, matcher)  # right count and stamp, wrong ids
    hits = json.loads(run("match", str(clips[1]), "--json").stdout)["matches"]  # match notices and rebuilds in memory
    assert hits[0]["name"] == "bob"
    db.context.index.files.save(new_index(pks + 100, vectors), generation, matcher)
    report = json.loads(run("check", "--json").stdout)
    assert [p["kind"] for p in report] == ["index"] and "other voices" in report[0]["message"]
    assert run("check", "--repair").exit_code == 0
    assert run("check").exit_code == 0
    hits = json.loads(run("match", str(clips[1]), "--json").stdout)["matches"]
    assert hits[0]["name"] == "bob"
