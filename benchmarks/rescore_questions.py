"""Score saved answers to a question file again, with the current key-fact matcher.

``assistant eval --questions FILE --json`` keeps every answer it scored; when the matcher
changes (e.g. plural endings), this re-scores the saved answers of an earlier run, so a
"before" run does not have to be repeated with its old code and models. Only key-fact recall
is recomputed (:func:`assistant.question_set.facts_found`); citations, abstentions and times
are the run's own. Prints the per-form table of each split as `eval` does, recall as saved →
re-scored.

    .venv/bin/python benchmarks/rescore_questions.py RUN.json [RUN2.json ...] \\
        [--questions benchmarks/questions/real.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from assistant import question_set


def rescore(run: dict, questions: dict[str, dict]) -> dict[str, list[dict]]:
    """Per split, :func:`assistant.question_set.rows` over the run's saved answers with key
    facts found again in each answer text.

    Raises:
        KeyError: a saved answer's id is not in the question file.
    """
    results = []
    for saved in run["questions"]["answers"]:
        facts = questions[saved["id"]].get("facts") or []
        found = 0 if saved["abstained"] else question_set.facts_found(saved["answer"], facts)
        fields = {k: saved[k] for k in question_set.Scored.__dataclass_fields__ if k in saved}
        results.append(question_set.Scored(**{**fields, "facts_found": found,
                                               "facts_total": len(facts)}))
    splits = dict.fromkeys(r.split for r in results)
    return {split: question_set.rows([r for r in results if r.split == split])
            for split in splits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="saved `eval --questions --json` output")
    parser.add_argument("--questions", type=Path,
                        default=Path(__file__).parent / "questions" / "real.json")
    args = parser.parse_args()
    _, listed = question_set.load(args.questions)
    by_id = {q["id"]: q for q in listed}
    for path in args.runs:
        run = json.loads(path.read_text(encoding="utf-8"))
        saved = run["questions"]["splits"]
        for split, rows in rescore(run, by_id).items():
            before = {r["form"]: r["key_fact_recall"] for r in saved.get(split, [])}
            print(f"\n{path.name}, {split}\n")
            print("| form | questions | key-fact recall saved → re-scored | citation correct "
                  "| gold cited |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for r in rows:
                print(f"| {r['form']} | {r['questions']} | {before.get(r['form'])} → "
                      f"**{r['key_fact_recall']}** | {r['citation_correct']} | "
                      f"{r['gold_cited']} |")


if __name__ == "__main__":
    main()
