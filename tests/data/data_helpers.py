"""Small record builders shared by the data tests (imported by name: pytest puts this folder on sys.path)."""

import json


def rec(rid="r0", human="<image>\nWhat digit is this?", answer="7", **media):
    return {"id": rid, **media, "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
