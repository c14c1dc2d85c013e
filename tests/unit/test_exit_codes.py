"""Every failing command's last line on stderr names patchflow's exit code and its meaning
(``patchflow: exit 4 (...)``), whatever the error: through make, whose own exit code is always 2,
that line is how the operator learns patchflow's (README "Exit codes")."""

from __future__ import annotations

import pytest
from invoke.exceptions import Exit

from patchflow import errors
from patchflow.errors import EXIT_CODES, exit_line
from patchflow.tasks.edge import reports_errors

RAISED = [
    (errors.ConfigError("bad setting", "fix it"), 1),
    (errors.VersionError("bad version"), 1),
    (errors.ApplyError("apply failed", "see the log", rolled_back=True), 2),
    (errors.LockError("locked", "wait"), 3),
    (errors.RollbackError("rollback incomplete", "patch-status"), 4),
    (errors.ConfirmationRefused("not confirmed", "--yes"), 5),
    (errors.RemoteError("unreachable", "check ssh"), 6),
    (errors.RemoteError("the remote apply failed", "", exit_code=2), 2),
    (KeyboardInterrupt(), 130),
]


@pytest.mark.parametrize(("error", "code"), RAISED, ids=[f"{type(e).__name__}-{c}" for e, c in RAISED])
def test_the_last_line_names_the_exit_code(error: BaseException, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    @reports_errors
    def task() -> None:
        raise error

    with pytest.raises(Exit) as caught:
        task()
    assert caught.value.code == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"patchflow: exit {code} ({EXIT_CODES[code]})"
    if isinstance(error, errors.PatchflowError):
        assert lines[0] == f"error: {error.message}"


def test_every_code_an_error_can_carry_has_a_meaning() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.PatchflowError)]
    codes = {cls.exit_code for cls in classes}
    assert codes | {0, 130} <= set(EXIT_CODES)
    assert exit_line(99) == "patchflow: exit 99 (failed)"


def test_readme_documents_every_code_and_makes_exit_2() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Exit codes") :]
    section = section[: section.index("\n## ")]
    for code, meaning in EXIT_CODES.items():
        assert f"| {code} | {meaning} |" in section, code
    assert "make" in section and "Error 4" in section
