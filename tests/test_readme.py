"""The README stays short, every link in the documentation leads somewhere, and every `voicedb` command line it
writes is one the CLI accepts: no torch, no library, only the Markdown and the click commands."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from conftest import ROOT

from voicedb.cli import cli

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, ROOT / "DEVELOPERS.md", *DOCS]

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
PROSE_SPAN = re.compile(r"(`+)((?:(?!\n[ \t]*\n).)+?)\1", re.S)  # may wrap, but not across a paragraph
LINK = re.compile(r"\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
OPTION = re.compile(r"--?[A-Za-z][\w-]*")
SHELL_SCRIPTS = {"bash", "sh", "shell"}  # blocks of commands alone; elsewhere a command follows "$ "


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def lines_of(page: Path) -> Iterator[tuple[int, str, str | None]]:
    """Each line with its number and, inside a fenced code block, the block's language ("" for none)."""
    block: str | None = None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            block = fence.group(2) if block is None else None
            continue
        yield number, line, block


def github_anchor(title: str) -> str:
    """GitHub's anchor of a heading: the text without markup, lowercase, punctuation other than '-' and '_' dropped,
    spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link's text stays, its address goes
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: dict[str, int] = {}
    result = set()
    for _, line, block in lines_of(page):
        heading = HEADING.match(line) if block is None else None
        if heading:
            anchor = github_anchor(heading.group(2))
            repeat = found.get(anchor, 0)
            found[anchor] = repeat + 1
            result.add(anchor if repeat == 0 else f"{anchor}-{repeat}")
    return result


def prose(page: Path) -> str:
    """The page with its fenced code blocks blanked out, so that offsets still give line numbers."""
    return "\n".join(line if block is None else "" for _, line, block in lines_of(page))


def line_at(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def spans_in(page: Path) -> Iterator[tuple[int, str]]:
    """Every code span of the page's text, even one wrapped over two lines, as one line, with where it starts."""
    text = prose(page)
    for span in PROSE_SPAN.finditer(text):
        yield line_at(text, span.start()), " ".join(span.group(2).split())


def links(page: Path) -> Iterator[tuple[int, str]]:
    """Every link and image address outside code, with its line number."""
    text = PROSE_SPAN.sub(lambda span: re.sub(r"[^\n]", " ", span.group()), prose(page))
    for link in LINK.finditer(text):
        yield line_at(text, link.start()), link.group(1)


def table_after(page: Path, heading: str) -> list[list[str]]:
    """The cells of each row of the first table after `heading`, header and separator left out."""
    rows: list[list[str]] = []
    seen_heading = False
    for _, line, block in lines_of(page):
        if block is None and HEADING.match(line) and HEADING.match(line).group(2) == heading:
            seen_heading = True
        elif seen_heading and line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
        elif seen_heading and rows:
            break
    assert rows, f"{relative(page)} has no table after {heading!r}"
    return rows[2:]


def code_spans(text: str) -> list[str]:
    return [span.strip() for _, span in CODE_SPAN.findall(text)]


def options_of(command: click.Command) -> dict[str, click.Parameter]:
    named = {"--help": None, "-h": None}  # the group's help_option_names
    for param in command.params:
        if isinstance(param, click.Option):
            named.update(dict.fromkeys([*param.opts, *param.secondary_opts], param))
    return named


def read_command_line(written: str) -> tuple[str, list[str]]:
    """The command path a written `voicedb ...` line runs ("db status", "" for the bare group) and what in it the
    CLI would refuse: an unknown command or an option that command does not take. Brackets mark optional parts,
    `\\|` alternatives (in tables); a shell line ends at `;`, `&&`, `|` or `#`."""
    lexer = shlex.shlex(written.replace("\\|", " "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        words = list(lexer)
    except ValueError:  # an unbalanced quote in prose
        words = written.replace("\\|", " ").split()
    assert words[0] == "voicedb", written
    command: click.Command = cli
    path: list[str] = []
    refused: list[str] = []
    values_to_skip = 0
    for token in words[1:]:
        if token and set(token) <= set(";&|<>()"):
            break
        word = token.strip("[]").removesuffix("...").strip("[]")
        if values_to_skip:
            values_to_skip -= 1
            continue
        if OPTION.fullmatch(word.split("=", 1)[0]):
            name = word.split("=", 1)[0]
            known = options_of(command)
            if name not in known:
                refused.append(f"`voicedb {' '.join(path)}` takes no option {name}")
            elif known[name] is not None and not (known[name].is_flag or known[name].count) and "=" not in word:
                values_to_skip = known[name].nargs
        elif isinstance(command, click.Group) and word:
            if word not in command.commands:
                refused.append(f"`voicedb {' '.join(path)}` has no command {word!r}")
                break
            command = command.commands[word]
            path.append(word)
    return " ".join(path), refused


def command_at(path: str) -> click.Command:
    command: click.Command = cli
    for word in path.split():
        command = command.commands[word]
    return command


def written_command_lines(page: Path) -> Iterator[tuple[int, str]]:
    """Every `voicedb ...` the page writes: code spans in its text and tables, commands in its code blocks."""
    for number, span in spans_in(page):
        span = re.sub(r"^(\w+=\S*\s+)+", "", span)  # OMP_NUM_THREADS=1 voicedb serve
        if span.startswith("voicedb "):
            yield number, span
    for number, line, block in lines_of(page):
        if block is not None and (
            line.startswith("$ voicedb ") or (block in SHELL_SCRIPTS and line.startswith("voicedb "))
        ):
            yield number, line.removeprefix("$ ")


def cli_commands(group: click.Group = cli, prefix: str = "") -> Iterator[str]:
    """Every command path a user can run: each command, and each group that runs without a subcommand."""
    for name, command in group.commands.items():
        if command.hidden:
            continue
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            if command.invoke_without_command:
                yield path
            yield from cli_commands(command, f"{path} ")
        else:
            yield path


def test_the_readme_is_under_400_lines():
    assert len(README.read_text().splitlines()) < 400


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_every_relative_link_leads_to_a_file_and_a_heading_that_exist(page: Path):
    broken = []
    for number, target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{relative(page)}:{number}: {target}: no file {file_part}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{relative(page)}:{number}: {target}: no heading #{anchor} in {relative(linked)}")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_page_of_docs_and_each_links_back():
    readme_links = {target.partition("#")[0] for _, target in links(README)}
    for page in DOCS:
        assert relative(page) in readme_links, f"README.md does not link {relative(page)}"
        title, *rest = page.read_text().splitlines()
        assert title.startswith("# "), f"{relative(page)} does not start with a one-line title"
        assert "../README.md" in "\n".join(rest[:3]), f"{relative(page)} does not link back to the README"


def test_every_command_the_cli_has_is_in_the_readmes_commands_table():
    documented = set()
    for row in table_after(README, "Commands"):
        for span in code_spans(row[0]):
            path, refused = read_command_line(span)
            assert not refused, (span, refused)
            documented.add(path)
    missing = [path for path in cli_commands() if path not in documented]
    assert not missing, f"README.md's commands table does not show: {', '.join(f'voicedb {p}' for p in missing)}"


def test_every_option_in_the_commands_table_is_one_its_command_accepts():
    refused = []
    for row in table_after(README, "Commands"):
        written = [span for span in code_spans(row[0]) if span.startswith("voicedb ")]
        commands = []
        for span in written:
            path, problems = read_command_line(span)
            refused += problems
            commands.append(command_at(path))
        # the description may name options too: each must belong to a command of its row
        for span in code_spans(row[1]):
            option = span.split()[0]
            if OPTION.fullmatch(option) and not any(option in options_of(command) for command in commands):
                refused.append(f"{option}, in the description of {', '.join(written)}, is an option of none of them")
    assert not refused, "\n".join(refused)


@pytest.mark.parametrize("page", [README, *DOCS], ids=relative)
def test_every_voicedb_command_line_written_in_the_docs_is_one_the_cli_accepts(page: Path):
    refused = []
    for number, written in written_command_lines(page):
        _, problems = read_command_line(written)
        refused += [f"{relative(page)}:{number}: {written}: {problem}" for problem in problems]
    assert not refused, "\n".join(refused)


def test_the_server_options_table_lists_exactly_the_options_voicedb_serve_takes():
    written = set()
    for row in table_after(ROOT / "docs" / "server.md", "Options"):
        written |= {word for span in code_spans(row[0]) for word in span.split() if word.startswith("--")}
    serve = cli.commands["serve"]
    accepted = {name for name in options_of(serve) if name.startswith("--") and name != "--help"}
    assert written == accepted, f"only in the table: {written - accepted}; not in the table: {accepted - written}"


def test_the_readmes_test_command_is_the_one_ci_runs():
    command = "pip install -e '.[test]' && pytest"
    assert f"```bash\n{command}\n```" in README.read_text()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1] == command
