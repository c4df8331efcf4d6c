"""Every command has help, is documented, and the light commands never load torch."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, run, voicedb_process

from voicedb.cli import cli


def test_every_command_has_help_text_and_a_readme_entry():
    readme = (ROOT / "README.md").read_text()
    for name, command in cli.commands.items():
        assert command.help and len(command.help) > 20, name
        assert f"voicedb {name}" in readme, f"README does not show `voicedb {name}`"
        assert run(name, "--help").exit_code == 0


def test_help_list_and_show_do_not_import_torch_or_chatterbox(standin: Path, speakers):
    code = (
        "import sys\n"
        "from voicedb.cli import main\n"
        "sys.argv = ['voicedb'] + sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    status = exit.code or 0\n"
        "heavy = sorted(m for m in ('torch', 'chatterbox', 'librosa', 'transformers', 'faiss') if m in sys.modules)\n"
        "print(f'STATUS={status} HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    )
    import subprocess
    import sys

    clip = next(iter(speakers.values()))[0]
    assert run("add", str(clip), "--name", "someone", "--no-conditionals").exit_code == 0
    expected = {"--help": "Usage: voicedb", "list": "someone", "show": "someone"}
    for args in (["--help"], ["list"], ["list", "--json"], ["show", "someone"]):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert "STATUS=0 HEAVY=\n" in done.stderr, (args, done.stderr)
        assert expected[args[0]] in done.stdout, (args, done.stdout)


def test_python_dash_m_runs_the_cli(standin: Path):
    done = voicedb_process("list", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # JSON lines: none for an empty library


def test_init_creates_the_library_layout(standin: Path):
    result = run("init")
    assert result.exit_code == 0
    assert str(standin) in result.output
    assert (standin / "voicedb.sqlite").is_file()
    assert (standin / "index.faiss").is_file()


def test_home_option_overrides_the_environment(standin: Path, tmp_path: Path):
    other = tmp_path / "elsewhere"
    assert run("--home", str(other), "init").exit_code == 0
    assert (other / "voicedb.sqlite").exists()
    assert not standin.exists()
