"""Writes this folder's Markdown documents: four articles of JSQuAD's test split (the offline training split)
that examples/own-data/qa.csv does not use, one file each, their passages as paragraphs under the title.
Their questions are left out: these are documents, for `jsquad-lora data generate` (README).

    python examples/documents/make_documents.py ../shared/jsquad/test-v1.3.json
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COUNT = 4


def main(test_split: str) -> None:
    with (HERE.parent / "own-data" / "qa.csv").open(encoding="utf-8-sig") as f:
        used = {row["文書"] for row in csv.DictReader(f)}
    articles = [a for a in json.loads(Path(test_split).read_text(encoding="utf-8"))["data"] if a["title"] not in used]
    for k, article in enumerate(articles[:COUNT], 1):
        body = "\n\n".join(p["context"].split(" [SEP] ", 1)[-1] for p in article["paragraphs"])
        (HERE / f"doc{k}.md").write_text(f"# {article['title']}\n\n{body}\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
