"""Generate the bench trees (fixed seed): a realistic PrimeFlow-like checkout.

``large``: 40,000 patchable files, about 400 MB: source text (js/ts/css/md/sql), JSON, images
and fonts that do not compress (random bytes), a few MB-sized bundles and media, plus a
``node_modules/`` and a ``.git/`` that create-patch excludes. ``small``: the same mix, 2,000
files and about 20 MB. The same seed always gives the same bytes.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

SEED = 20250101


@dataclass(frozen=True)
class TreeSpec:
    """How many files of each kind (counts) and their mean sizes (bytes)."""

    text: int
    text_mean: int
    json: int
    json_mean: int
    assets: int
    assets_mean: int
    big_text: int
    big_binary: int
    big_mean: int
    node_modules: int
    git_objects: int

    @property
    def files(self) -> int:
        return self.text + self.json + self.assets + self.big_text + self.big_binary + 2  # VERSION, package.json


SPECS = {
    "large": TreeSpec(29_000, 6_000, 4_500, 4_000, 6_458, 18_000, 25, 15, 2_400_000, 6_000, 1_500),
    "small": TreeSpec(1_450, 6_000, 225, 4_000, 318, 18_000, 2, 3, 1_200_000, 600, 150),
}

KEYWORDS = [
    "const",
    "let",
    "function",
    "return",
    "if",
    "else",
    "import",
    "from",
    "export",
    "await",
    "async",
    "this",
    "new",
    "=>",
    "{",
    "}",
    "(",
    ")",
    ";",
    "=",
    ".",
    ",",
    "try",
    "catch",
    "throw",
    "class",
    "extends",
    "static",
    "get",
    "set",
    "of",
    "in",
    "for",
    "while",
    "switch",
    "case",
    "break",
    "default",
    "null",
    "undefined",
    "true",
    "false",
    "typeof",
]
TEXT_KINDS = (
    ("apps/api/src", ".ts"),
    ("apps/worker/src", ".ts"),
    ("src/components", ".tsx"),
    ("src/pages", ".tsx"),
    ("src/styles", ".css"),
    ("packages/shared/src", ".ts"),
    ("packages/ui/src", ".tsx"),
    ("docs", ".md"),
    ("packages/db/queries", ".sql"),  # not under prisma/migrations: those folders hold one migration.sql each
)
ASSET_KINDS = (
    ("public/assets/img", ".png"),
    ("public/assets/photos", ".jpg"),
    ("public/fonts", ".woff2"),
    ("public/assets/icons", ".webp"),
)


def _corpus(rng: random.Random, size: int) -> bytes:
    """Code-like text: indented lines of keywords and identifiers with a skewed vocabulary."""
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12))) for _ in range(4000)]
    common = words[:120]
    lines = []
    total = 0
    while total < size:
        count = rng.randint(3, 10)
        parts = []
        for _ in range(count):
            roll = rng.random()
            if roll < 0.45:
                parts.append(rng.choice(KEYWORDS))
            elif roll < 0.85:
                parts.append(rng.choice(common))
            else:
                parts.append(rng.choice(words))
        line = "  " * rng.randint(0, 5) + " ".join(parts) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def _size(rng: random.Random, mean: int) -> int:
    return max(16, int(rng.lognormvariate(0, 0.9) * mean / 1.5))


def make_tree(root: Path, kind: str = "large", seed: int = SEED) -> dict[str, int]:
    """Write the ``kind`` tree under ``root`` (created); returns counts and bytes written."""
    spec = SPECS[kind]
    rng = random.Random(seed)
    corpus = _corpus(rng, 8 * 1024 * 1024)
    stats = {"files": 0, "bytes": 0, "excluded_files": 0}
    made: set[Path] = set()

    def write(rel: str, data: bytes, *, excluded: bool = False) -> None:
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        with open(path, "wb") as handle:
            handle.write(data)
        key = "excluded_files" if excluded else "files"
        stats[key] += 1
        if not excluded:
            stats["bytes"] += len(data)

    def text(size: int) -> bytes:
        start = rng.randrange(0, len(corpus) - 1)
        out = corpus[start : start + size]
        while len(out) < size:
            out += corpus[: size - len(out)]
        return out

    root.mkdir(parents=True, exist_ok=True)
    write("VERSION", b"1.0.0\n")
    write("package.json", json.dumps({"name": "primeflow", "private": True, "version": "1.0.0"}).encode())
    for index in range(12):  # Prisma's layout: <timestamp>_<name>/migration.sql
        write(f"prisma/migrations/20250101{index:02}0000_step{index}/migration.sql", text(2048))
    for index in range(spec.text):
        folder, suffix = TEXT_KINDS[index % len(TEXT_KINDS)]
        write(f"{folder}/mod{index % 97}/part{index % 13}/file{index}{suffix}", text(_size(rng, spec.text_mean)))
    for index in range(spec.json):
        size = _size(rng, spec.json_mean)
        items = [{"id": rng.randrange(10**6), "key": f"k{rng.randrange(500)}", "on": rng.random() < 0.5}]
        data = json.dumps(items * max(1, size // 60), indent=2).encode()[:size]
        write(f"config/locales/set{index % 31}/data{index}.json", data)
    for index in range(spec.assets):
        folder, suffix = ASSET_KINDS[index % len(ASSET_KINDS)]
        write(f"{folder}/group{index % 23}/asset{index}{suffix}", rng.randbytes(_size(rng, spec.assets_mean)))
    for index in range(spec.big_text):
        write(f"public/bundles/bundle{index}.js", text(int(spec.big_mean * rng.uniform(0.4, 1.6))))
    for index in range(spec.big_binary):
        suffix = (".mp4", ".zip", ".bin")[index % 3]
        write(f"public/media/clip{index}{suffix}", rng.randbytes(int(spec.big_mean * rng.uniform(0.4, 1.6))))
    for index in range(spec.node_modules):
        write(f"node_modules/pkg{index % 300}/lib/index{index}.js", text(_size(rng, 5_000)), excluded=True)
    for index in range(spec.git_objects):
        write(f".git/objects/{index % 256:02x}/{index:038x}", rng.randbytes(_size(rng, 8_000)), excluded=True)
    (root / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    os.sync()
    return stats


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    print(make_tree(Path(sys.argv[2]), sys.argv[1]))
