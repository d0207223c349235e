"""Fetch data sets through the package registries only (Debian's archive here), pinned and sha256-verified.

Layout: <data dir>/<name>/ holds the verified files and a `SOURCE.json` naming where they came from. The data
dir is `--data-dir`, else $PERTURBMERGE_DATA, else ~/.cache/perturbmerge. Installs are atomic: files are unpacked
and checked in a temporary folder that is renamed into place only when every checksum matches.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, did_you_mean
from ..io import sha256_file


@dataclass(frozen=True)
class DebianSource:
    """A file set inside a pinned Debian package, fetched with `apt-get download` and unpacked with `dpkg -x`."""

    name: str
    package: str
    version: str
    deb_sha256: str
    files: dict[str, str] = field(default_factory=dict)  # path inside the package -> sha256
    licence: str = ""

    def fetch_into(self, folder: Path) -> None:
        work = folder / ".deb"
        work.mkdir()
        _run(["apt-get", "download", f"{self.package}={self.version}"], work,
             f"could not download Debian package {self.package}={self.version}; check that apt can reach the archive "
             f"(try `apt-get update`)")
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise UserError(f"apt-get download {self.package} produced {len(debs)} .deb files; expected one")
        _verify(debs[0], self.deb_sha256, f"Debian package {self.package}")
        unpacked = work / "root"
        _run(["dpkg", "-x", str(debs[0]), str(unpacked)], work, f"could not unpack {debs[0].name} with dpkg -x")
        for inner, digest in self.files.items():
            source = unpacked / inner
            if not source.is_file():
                raise UserError(f"{inner} is missing from {self.package}; the package layout changed")
            _verify(source, digest, inner)
            shutil.move(str(source), folder / Path(inner).name)
        shutil.rmtree(work)


SOURCES: dict[str, DebianSource] = {
    "wordnet": DebianSource(
        name="wordnet",
        package="wordnet-base",
        version="1:3.0-37",
        deb_sha256="61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
        files={"usr/share/wordnet/data.noun": "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2"},
        licence="WordNet 3.0 licence (Princeton University), permissive; notice kept in the package's copyright file",
    ),
}


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("PERTURBMERGE_DATA"):
        return Path(os.environ["PERTURBMERGE_DATA"]).expanduser()
    return Path.home() / ".cache" / "perturbmerge"


def _verify(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"checksum mismatch for {what}: sha256 {actual[:16]}…, expected {expected[:16]}…; "
                        f"the source changed or the download is corrupt")


def _run(command: list[str], cwd: Path, message: str) -> None:
    if shutil.which(command[0]) is None:
        raise UserError(f"{command[0]} not found; data fetching needs a Debian-based system with {command[0]}")
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{message} ({last})")


def get_source(name: str) -> DebianSource:
    if name not in SOURCES:
        raise UserError(f"unknown data set '{name}'{did_you_mean(name, SOURCES)}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def fetch(name: str, data_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Download, verify and install data set `name`; return its folder. A verified copy is reused."""
    source = get_source(name)
    root = data_root(data_dir)
    target = root / name
    if target.exists() and not force:
        verify_installed(source, target)
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        source.fetch_into(staging)
        (staging / "SOURCE.json").write_text(json.dumps(
            {"package": source.package, "version": source.version, "deb_sha256": source.deb_sha256,
             "files": source.files, "licence": source.licence}, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def verify_installed(source: DebianSource, folder: Path) -> None:
    for inner, digest in source.files.items():
        path = folder / Path(inner).name
        if not path.is_file():
            raise UserError(f"{path} is missing; run `perturbmerge data fetch {source.name} --force`")
        _verify(path, digest, str(path))


def require(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The installed folder of `name`, or a one-line error naming the command that fetches it."""
    source = get_source(name)
    folder = data_root(data_dir) / name
    if not folder.exists():
        hint = f" --data-dir {data_dir}" if data_dir else ""
        raise UserError(f"data set '{name}' not found in {folder.parent}; fetch it with "
                        f"`perturbmerge data fetch {name}{hint}`")
    verify_installed(source, folder)
    return folder
