"""Write src/perturbmerge/data/splits/glyph-fonts.json: the Debian font packages of the `glyphs` benchmark,
pinned (version, .deb sha256), and the font files kept from each (sha256).

Usage: download the packages first (`apt-get download PKG ...` into DEBS), then
    python scripts/make_glyph_font_manifest.py DEBS
A font file is kept when its character map covers all 62 glyph classes (0-9, A-Z, a-z), it is not a symbol or
math font, and no earlier file has the same bytes. Packages are read in name order, files in path order.
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
OUT = Path(__file__).resolve().parents[1] / "src/perturbmerge/data/splits/glyph-fonts.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def covers_glyphs(path: Path) -> bool:
    font = TTFont(str(path), lazy=True)
    cmap = font.getBestCmap() or {}
    family = font["name"].getDebugName(1) or ""
    return all(ord(c) in cmap for c in GLYPHS) and not any(word in family for word in EXCLUDED_NAMES)


def main(debs: Path) -> None:
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
                if path.is_symlink() or not path.is_file() or path.suffix.lower() not in (".ttf", ".otf"):
                    continue
                digest = sha256(path)
                if digest in seen or not covers_glyphs(path):
                    continue
                seen.add(digest)
                files[str(path.relative_to(root))] = digest
        if files:
            packages.append({"package": info["Package"], "version": info["Version"], "deb_sha256": sha256(deb),
                             "files": files})
    OUT.write_text(json.dumps({"glyphs": GLYPHS, "packages": packages}, indent=1) + "\n")
    print(f"{OUT}: {len(packages)} packages, {sum(len(p['files']) for p in packages)} fonts")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
