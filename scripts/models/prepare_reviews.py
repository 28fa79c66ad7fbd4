"""Turn the fetched labelled texts into one file of customer-feedback-like reviews.

    data/reviews.jsonl   {"id", "source", "text", "label", "rating", "split"} per line

- Rotten Tomatoes: fresh -> positive, rotten -> negative (plot summaries dropped); split by
  movie, so no movie's reviews are in both halves.
- Tweets: positive / negative (neutral dropped); split by a hash of the text.
- `split` is "train" or "holdout" from a stable hash (20% holdout), so reruns agree.
- `rating` (1-5) is derived from the label and a hash of the id (positive -> 4 or 5,
  negative -> 1 or 2), so the replayed stream looks like product feedback with ratings.

`sluice demo --pipeline sentiment` replays the holdout texts as the customer-feedback topic.
"""

import csv
import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
HOLDOUT_PERCENT = 20


def bucket(key):
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100


def rows():
    with open(DATA / "rotten_tomatoes.csv", newline="", encoding="utf-8") as f:
        for i, r in enumerate(csv.DictReader(f)):
            label = {"fresh": "positive", "rotten": "negative"}.get(r["category"])
            if label and r["text"].strip():
                yield f"rt-{i}", "rotten_tomatoes", r["text"].strip(), label, "movie:" + r["movie_name"]
    with open(DATA / "tweets.csv", newline="", encoding="latin-1") as f:
        for i, r in enumerate(csv.DictReader(f)):
            if r["sentiment"] in ("positive", "negative") and r["text"].strip():
                yield f"tw-{i}", "tweets", r["text"].strip(), r["sentiment"], "text:" + r["text"]


def main():
    out = DATA / "reviews.jsonl"
    tmp = out.with_suffix(".part")
    counts = {}
    with open(tmp, "w", encoding="utf-8") as f:
        for rid, source, text, label, split_key in rows():
            split = "holdout" if bucket(split_key) < HOLDOUT_PERCENT else "train"
            rating = (4 if bucket(rid) % 2 else 5) if label == "positive" else (1 if bucket(rid) % 2 else 2)
            f.write(json.dumps({"id": rid, "source": source, "text": text, "label": label, "rating": rating, "split": split}) + "\n")
            counts[(source, split)] = counts.get((source, split), 0) + 1
    tmp.replace(out)
    summary = ", ".join(f"{s}/{p}: {n}" for (s, p), n in sorted(counts.items()))
    print(f"reviews: {out.relative_to(ROOT)} ({summary})")


if __name__ == "__main__":
    main()
