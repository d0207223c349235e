"""Write a manifest of pinned Debian packages (version, .deb sha256) and the files kept from each (sha256), for a
`DebianBundleSource` (perturbmerge/data/fetch.py):

    python scripts/make_debian_manifest.py fonts DEBS   -> splits/glyph-fonts.json   (the `glyphs` benchmark)
    python scripts/make_debian_manifest.py words DEBS   -> splits/langid-words.json  (the `langid` benchmark)

Download the packages first (`apt-get download PKG ...` into DEBS). fonts: a .ttf/.otf file is kept when its
character map covers all 62 glyph classes (0-9, A-Z, a-z), it is not a symbol or math font, and no earlier file
has the same bytes. words: every regular file under usr/share/dict/. Packages in name order, files in path order.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from fontTools.ttLib import TTFont

GLYPHS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
EXCLUDED_NAMES = ("Symbol", "Dingbat", "Math")
SPLITS = Path(__file__).resolve().parents[1] / "src/perturbmerge/data/splits"
OUTPUTS = {"fonts": "glyph-fonts.json", "words": "langid-words.json"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def covers_glyphs(path: Path) -> bool:
    font = TTFont(str(path), lazy=True)
    cmap = font.getBestCmap() or {}
    family = font["name"].getDebugName(1) or ""
    return all(ord(c) in cmap for c in GLYPHS) and not any(word in family for word in EXCLUDED_NAMES)


def keep(kind: str, path: Path, relative: str) -> bool:
    if kind == "words":
        return relative.startswith("usr/share/dict/")
    return path.suffix.lower() in (".ttf", ".otf") and covers_glyphs(path)


def main(kind: str, debs: Path) -> None:
    packages, seen = [], set()
    for deb in sorted(debs.glob("*.deb")):
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True,
                                check=True).stdout
        info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg", "-x", str(deb), tmp], check=True)
            root = Path(tmp)
            files = {}
            for path in sorted(root.rglob("*")):
                if path.is_symlink() or not path.is_file():
                    continue
                digest = sha256(path)
                if digest in seen or not keep(kind, path, str(path.relative_to(root))):
                    continue
                seen.add(digest)
                files[str(path.relative_to(root))] = digest
        if files:
            packages.append({"package": info["Package"], "version": info["Version"], "deb_sha256": sha256(deb),
                             "files": files})
    out = SPLITS / OUTPUTS[kind]
    extra = {"glyphs": GLYPHS} if kind == "fonts" else {}
    out.write_text(json.dumps({**extra, "packages": packages}, indent=1) + "\n")
    print(f"{out}: {len(packages)} packages, {sum(len(p['files']) for p in packages)} files")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in OUTPUTS:
        sys.exit("usage: make_debian_manifest.py fonts|words DEBS")
    main(sys.argv[1], Path(sys.argv[2]))
