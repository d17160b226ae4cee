"""How qa.csv was made: about 300 questions of JSQuAD v1.3's test split (the first two passages of each
article, in order), laid out as a spreadsheet export would be.

Run from the repository root with ../shared/jsquad beside it: `python examples/own-data/make_qa_csv.py`.
The columns have Japanese names (文書, 本文, 質問, 回答), there is no id and no answer_start (the tool finds
the answer in its passage), and the file is UTF-8 with a BOM, as Excel writes "CSV UTF-8".
"""

import csv
import json
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "jsquad" / "test-v1.3.json"
TARGET = Path(__file__).resolve().parent / "qa.csv"
QUESTIONS = 300

rows = []
for article in json.loads(SOURCE.read_text(encoding="utf-8"))["data"]:
    title = article["title"]
    for paragraph in article["paragraphs"][:2]:
        body = paragraph["context"].split(" [SEP] ", 1)[-1]
        for qa in paragraph["qas"]:
            answer = qa["answers"][0]["text"]
            if answer in body:  # a few JSQuAD answers are in the title prefix only
                rows.append([title, body, qa["question"], answer])
    if len(rows) >= QUESTIONS:
        break
with open(TARGET, "w", encoding="utf-8-sig", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["文書", "本文", "質問", "回答"])
    writer.writerows(rows)
print(f"{TARGET}: {len(rows)} questions from {len({r[0] for r in rows})} articles")
