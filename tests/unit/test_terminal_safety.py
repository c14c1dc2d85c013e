"""The terminal is the operator's (issue 25, fault 5): what a host or a service says reaches it with
its control characters shown escaped and its lines bounded, in the deploy stream, the summary table
and ``inv logs``; a host's line without a newline does not make this process hold it all."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchflow.redact import MAX_SHOWN, shown
from patchflow.remote.runs import MAX_LINE_BYTES, _LineEmitter
from patchflow.runner import LocalRunner

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\r\x1b[32mapplied OK\x1b[0m\x9b31m\x08"


def test_control_characters_are_shown_escaped_and_long_lines_cut() -> None:
    safe = shown(f"[app1] {HOSTILE}\ttab kept")
    assert "\x1b" not in safe and "\x07" not in safe and "\r" not in safe and "\x9b" not in safe
    assert safe == "[app1] \\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x1b[32mapplied OK\\x1b[0m\\x9b31m\\x08\ttab kept"
    cut = shown("x" * (MAX_SHOWN + 500))
    assert cut.endswith(" ... (500 more characters)") and len(cut) < MAX_SHOWN + 40


def test_a_host_line_without_a_newline_is_cut_and_memory_stays_bounded() -> None:
    lines: list[str] = []
    emitter = _LineEmitter("app1", lines.append)
    chunk = b"A" * (1024 * 1024)
    for _ in range(64):  # 64 MiB without a newline, as a hostile host streams it
        emitter.feed(chunk)
        assert len(emitter.pending) <= MAX_LINE_BYTES
    emitter.feed(b"tail\nerror: the next line\n")
    emitter.flush()
    assert len(lines) == 3, [line[:80] for line in lines]
    assert lines[0].startswith("[app1] AAAA") and len(lines[0]) == len("[app1] ") + MAX_LINE_BYTES
    dropped = 64 * 1024 * 1024 - MAX_LINE_BYTES
    assert lines[1] == f"[app1] (a line of more than {MAX_LINE_BYTES} bytes was cut: {dropped} bytes dropped)"
    assert lines[2] == "[app1] error: the next line" and emitter.last_error == "the next line"


def test_the_deploy_summary_shows_a_hosts_words_as_text_never_as_markup_or_control(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from invoke.exceptions import Exit

    from patchflow.remote.outcome import FleetReport, HostResult
    from patchflow.tasks.fleet_view import exit_with

    report = FleetReport(
        "deploy",
        "2.3.0",
        [HostResult("app1", before="2.2.0", result="failed", exit_code=2, detail=f"[green]fine[/] {HOSTILE}")],
    )
    with pytest.raises(Exit):
        exit_with(report)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "\x1b]0;" not in text and "\x07" not in text and "\x1b[2J" not in text
    assert "[green]fine[/]" in text, text  # the host's markup printed as text, not obeyed


def test_inv_logs_relays_a_services_lines_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "api.log"
    log.write_text(f"started\n{HOSTILE}\n")
    code = LocalRunner().attach(["cat", str(log)], escape=True)
    assert code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "started" and "\x1b" not in out and "\\x1b]0;pwned" in out
