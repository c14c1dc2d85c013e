"""Semantic versions: parsing, ordering, unsafe input, the VERSION file."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from patchflow.errors import VersionError
from patchflow.version import PatchVersion, parse_version, read_version_file


@pytest.mark.parametrize("text", ["2.3.0", "v2.3.0", "V2.3.0", " 2.3.0\n"])
def test_parse_with_and_without_v_prefix(text: str) -> None:
    version = parse_version(text)
    assert version == PatchVersion(2, 3, 0)
    assert str(version) == "2.3.0"
    assert version.tag == "v2.3.0"


def test_parse_pre_release_and_build_metadata() -> None:
    version = parse_version("v2.3.0-rc.1+build.7")
    assert (version.major, version.minor, version.patch) == (2, 3, 0)
    assert version.pre == "rc.1"
    assert version.build == "build.7"
    assert str(version) == "2.3.0-rc.1+build.7"
    assert version.tag == "v2.3.0-rc.1+build.7"


def test_build_metadata_does_not_change_precedence() -> None:
    plain, built = parse_version("2.3.0"), parse_version("2.3.0+build.7")
    assert not plain < built
    assert not built < plain


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("2.3.0-rc.1", "2.3.0"),
        ("2.3.0-alpha.1", "2.3.0-beta.1"),
        ("2.3.0-beta.1", "2.3.0-rc.1"),
        ("2.3.0-alpha.2", "2.3.0-alpha.10"),
        ("2.9.0", "2.10.0"),
        ("2.3.9", "2.3.10"),
        ("1.99.99", "2.0.0"),
        ("2.3.0", "2.3.1-rc.1"),
    ],
)
def test_ordering(lower: str, higher: str) -> None:
    assert parse_version(lower) < parse_version(higher)
    assert parse_version(higher) > parse_version(lower)


def test_ordering_follows_the_semver_spec_example() -> None:
    # https://semver.org/#spec-item-11, in increasing precedence
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ]
    parsed = [parse_version(v) for v in chain]
    assert sorted(reversed(parsed)) == parsed
    for lower, higher in itertools.pairwise(parsed):
        assert lower < higher, f"{lower} should sort before {higher}"


def test_unlabelled_pre_release_sorts_lexically_not_before_alpha() -> None:
    assert parse_version("2.3.0-alpha.1") < parse_version("2.3.0-rc1") < parse_version("2.3.0")


def test_max_picks_the_release() -> None:
    versions = [parse_version(v) for v in ("2.3.0-rc.2", "2.3.0", "2.3.0-rc.10", "2.2.9")]
    assert str(max(versions)) == "2.3.0"


@pytest.mark.parametrize(
    ("text", "bad_chars"),
    [
        ("2.3.0;rm -rf /", ["';'", "' '", "'/'"]),
        ("$(id)", ["'$'", "'('", "')'"]),
        ("2.3.0 && x", ["' '", "'&'"]),
        ("../2.3.0", ["'/'"]),
        ("2.3.0`id`", ["'`'"]),
    ],
)
def test_unsafe_input_names_the_bad_characters(text: str, bad_chars: list[str]) -> None:
    with pytest.raises(VersionError) as caught:
        parse_version(text)
    message = caught.value.message
    assert repr(text.strip()) in message
    assert "not allowed" in message
    for char in bad_chars:
        assert char in message
    assert "nothing was changed" in caught.value.hint


@pytest.mark.parametrize("text", ["2.3", "2", "2.3.0.1", "02.3.0", "2.3.0-", "2.3.0+", "x.y.z", "2.3.0-rc..1"])
def test_malformed_versions_are_refused(text: str) -> None:
    with pytest.raises(VersionError, match=r"expected a semantic version MAJOR\.MINOR\.PATCH"):
        parse_version(text)


@pytest.mark.parametrize(("text", "char"), [("2.1٣.0", "٣"), ("1２.0.0", "２"), ("２.3.0", "２")])
def test_non_ascii_digits_are_refused(text: str, char: str) -> None:
    with pytest.raises(VersionError, match="not allowed") as caught:
        parse_version(text)
    assert repr(char) in caught.value.message


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_version(text: str | None) -> None:
    with pytest.raises(VersionError, match="No version given") as caught:
        parse_version(text)
    assert "--version" in caught.value.hint


def test_source_is_named_in_the_message() -> None:
    with pytest.raises(VersionError, match=r"Invalid --version '2\.3'"):
        parse_version("2.3", source="--version")


def test_read_version_file(tmp_path: Path) -> None:
    path = tmp_path / "VERSION"
    path.write_text("v2.2.0\n", encoding="utf-8")
    assert read_version_file(path) == PatchVersion(2, 2, 0)
    assert path.read_text(encoding="utf-8") == "v2.2.0\n"


def test_read_version_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "VERSION"
    with pytest.raises(VersionError) as caught:
        read_version_file(path)
    assert str(path) in caught.value.message
    assert "does not exist" in caught.value.message
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_read_version_file_invalid(tmp_path: Path) -> None:
    path = tmp_path / "VERSION"
    path.write_text("2.3.0; reboot\n", encoding="utf-8")
    with pytest.raises(VersionError) as caught:
        read_version_file(path)
    assert f"version in {path}" in caught.value.message
    assert "';'" in caught.value.message
    assert path.read_text(encoding="utf-8") == "2.3.0; reboot\n"


@pytest.mark.parametrize("text", ["1.2.0-rc.01", "1.2.0-01", "01.2.0", "1.02.0", "1.2.0-alpha.00"])
def test_numeric_identifiers_with_leading_zeros_are_refused(text: str) -> None:
    with pytest.raises(VersionError) as caught:
        parse_version(text)
    assert "leading zero" in caught.value.message


@pytest.mark.parametrize("text", ["1.2.0-rc.1", "1.2.0-0a", "1.2.0-rc.0", "1.2.0+build.007", "1.2.0-x-01"])
def test_valid_semver_is_accepted(text: str) -> None:
    assert str(parse_version(text)) == text
