"""Preference pairs: the schema, malformed records to quarantine with reasons, synthetic pairs."""

import json

from stages.cleaning import Rules
from stages.config import PipelineConfig
from stages.preferences import (
    build_pairs,
    clean_pairs,
    dpo_rows,
    kto_rows,
    read_pairs,
    split_pairs,
    synthetic_pairs,
)

GOOD = {"prompt": "What does len() return?", "chosen": "The number of items in a container.",
        "rejected": "A string with the name of the object."}  # fmt: skip


def test_malformed_preference_records_are_quarantined_with_reasons_and_good_ones_kept(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [
        GOOD,
        {  # chat form, with a system turn and PII in the rejected answer
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is pi?"},
            ],
            "chosen": [{"role": "assistant", "content": "About 3.14159, the circle constant."}],
            "rejected": [{"role": "assistant", "content": "Ask ada@example.org about it, she knows."}],
        },
        {"prompt": "Say hi.", "chosen": "Hello there, friend!"},  # no rejected
        {"prompt": "Same?", "chosen": "Exactly the same answer.", "rejected": "Exactly  the same answer."},
        {"prompt": "Empty?", "chosen": "A real answer is here.", "rejected": "   "},
        {"prompt": ["not", "messages"], "chosen": "An answer here.", "rejected": "Another one."},
        {
            "prompt": [{"role": "assistant", "content": "ends with the model"}],
            "chosen": "Fine answer.",
            "rejected": "x",
        },
        {"prompt": "Short?", "chosen": "No.", "rejected": "A long and wrong answer."},  # chosen too short
        ["not", "an", "object"],
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"prompt": "broken\n')
    read = read_pairs(path, "preferences/prefs.jsonl")
    assert sorted(q["reason"] for q in read.quarantine) == [
        "invalid_json", "missing_field", "not_an_object", "wrong_type", "wrong_type"]  # fmt: skip
    cleaned = clean_pairs(read.records, Rules())
    assert sorted(d["reason"] for d in cleaned.dropped) == [
        "chosen_equals_rejected",
        "empty_rejected",
        "too_short",
    ]
    assert [p["source_line"] for p in cleaned.kept] == [1, 2]
    assert cleaned.kept[1]["rejected"] == "Ask <EMAIL> about it, she knows."
    assert cleaned.pii == {"email": 1}
    # Everything read is accounted for: kept + dropped + quarantined.
    assert len(cleaned.kept) + len(cleaned.dropped) + len(read.quarantine) == len(rows) + 1

    chat = dpo_rows(cleaned.kept)[1]
    assert chat["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is pi?"},
    ]
    assert chat["chosen"] == [{"role": "assistant", "content": "About 3.14159, the circle constant."}]
    assert chat["rejected"][0]["role"] == "assistant"


def test_fields_map_other_column_names_onto_the_preference_schema(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text("question,good,bad\nWhat is 2+2?,It is four.,It is five.\n")
    read = read_pairs(
        path, "preferences/prefs.csv", fields={"prompt": "question", "chosen": "good", "rejected": "bad"}
    )
    assert read.quarantine == []
    assert (
        read.records[0]["messages"][-1]["content"] == "It is four."
        and read.records[0]["rejected"] == "It is five."
    )


def test_synthetic_pairs_keep_only_answers_that_differ_from_the_reference():
    records = [
        {"id": str(i), "source_file": "a.jsonl", "source_line": i,
         "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": ref}]}
        for i, ref in enumerate(["Return the sum of the numbers.", "Split the string at whitespace."])
    ]  # fmt: skip
    records.append({**records[1], "id": "2"})
    # A document answers no prompt: no pair comes from it, whatever the model wrote.
    records.append(
        {"id": "doc", "schema": "text", "messages": [{"role": "assistant", "content": "A document."}]}
    )
    generated = ["Return the sum of the numbers.", "It is a banana, ask bob@example.com.", "\n\n\n", "Other."]
    pairs = synthetic_pairs(records, generated, max_rouge_l=0.5)
    assert [p["id"] for p in pairs] == ["1", "2"]  # the first answer already matches its reference
    assert pairs[0]["synthetic"] is True and pairs[0]["rejected"] == "It is a banana, ask <EMAIL>."
    assert pairs[0]["messages"][-1]["content"] == "Split the string at whitespace."
    assert pairs[1]["rejected"] == ""  # a blank answer: answering is preferred to silence


def test_pairs_are_read_cleaned_decontaminated_and_accounted_for_in_one_place(tmp_path):
    from stages.config import parse_config
    from stages.preferences import build_pairs

    passage = "the reference walker visits every node in order before any callback sees a partial result"
    path = tmp_path / "prefs.jsonl"
    rows = [GOOD,
            {"prompt": "How does it walk?", "chosen": f"In short: {passage}.", "rejected": "It does not walk."},
            {"prompt": "Same?", "chosen": "Exactly the same answer.", "rejected": "Exactly the same answer."}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"prompt": "broken\n')
    cfg = parse_config({"data": {"decontamination": {"enabled": True, "ngram": 13}}})
    eval_rows = [{"id": "e1", "messages": [{"role": "user", "content": "Describe it."},
                                           {"role": "assistant", "content": passage.capitalize()}]}]  # fmt: skip
    built = build_pairs({path: "preferences/prefs.jsonl"}, None, cfg, eval_rows)
    assert [p["messages"][-1]["content"] for p in built.kept] == [GOOD["chosen"]]
    # Nothing leaves in silence: 4 read, 1 kept, 3 dropped each with its reason.
    assert built.summary["pairs_in"] == 4 and built.summary["pairs"] == 1
    assert built.summary["dropped"] == {"invalid_json": 1, "chosen_equals_rejected": 1, "contaminated": 1}
    assert sorted(d["reason"] for d in built.dropped) == [
        "chosen_equals_rejected",
        "contaminated",
        "invalid_json",
    ]
    assert built.summary["landing_files"]["preferences/prefs.jsonl"]["train_records"] == 1
    # Synthetic pairs (no files) are taken as built, labelled synthetic.
    synthetic = build_pairs({}, built.kept, parse_config({}), [])
    assert synthetic.summary["synthetic"] is True and synthetic.kept == built.kept


def test_a_ranked_list_becomes_every_pair_with_a_strictly_better_rank_and_ties_make_none(tmp_path):
    answers = [
        "Best answer, it is right.",
        "Second answer, close.",
        "Also second, tied.",
        "Worst answer here.",
    ]
    rows = [
        {"id": "r1", "prompt": "Rank these.", "responses": answers, "ranks": [1, 2, 2, 3]},
        {"prompt": "Two only.", "responses": ["Better one here.", "Worse one here."], "ranks": [2, 1]},
    ]
    path = write(tmp_path / "ranked.jsonl", rows)
    read = read_pairs(path, "preferences/ranked.jsonl")
    assert read.quarantine == [] and read.unpaired == []
    got = [(p["id"], p["messages"][-1]["content"], p["rejected"], p["split_id"]) for p in read.records]
    assert got == [
        ("r1:0>1", answers[0], answers[1], "r1"),
        ("r1:0>2", answers[0], answers[2], "r1"),
        ("r1:0>3", answers[0], answers[3], "r1"),
        ("r1:1>3", answers[1], answers[3], "r1"),  # 1 and 2 tie: no pair between them
        ("r1:2>3", answers[2], answers[3], "r1"),
        (
            "preferences/ranked.jsonl:2:1>0",
            "Worse one here.",
            "Better one here.",
            "preferences/ranked.jsonl:2",
        ),
    ]
    assert {p["origin"] for p in read.records} == {"ranked"}
    assert read.records[0]["messages"][:-1] == [{"role": "user", "content": "Rank these."}]


def test_malformed_ranked_lists_are_quarantined_with_their_reason(tmp_path):
    rows = [
        {"prompt": "a", "responses": ["One answer.", "Two answer."], "ranks": [1]},
        {"prompt": "b", "responses": ["Only one answer."], "ranks": [1]},
        {"prompt": "c", "responses": ["One answer.", "Two answer."], "ranks": [1, 0]},
        {"prompt": "d", "responses": ["One answer.", "Two answer."], "ranks": [1, "first"]},
        {"prompt": "e", "responses": ["One answer.", "Two answer."], "ranks": [2, 2]},
        {"prompt": "f", "responses": "not a list", "ranks": [1, 2]},
        {"responses": ["One answer.", "Two answer."], "ranks": [1, 2]},
    ]
    read = read_pairs(write(tmp_path / "bad.jsonl", rows), "preferences/bad.jsonl")
    assert read.records == []
    assert [(q["source_line"], q["reason"]) for q in read.quarantine] == [
        (1, "ranks_mismatch"),
        (2, "too_few_responses"),
        (3, "bad_rank"),
        (4, "bad_rank"),
        (5, "all_tied"),
        (6, "wrong_type"),
        (7, "missing_field"),
    ]
    assert read.quarantine[0]["detail"] == "2 responses but 1 ranks: give one rank each"


def test_thumbs_become_unpaired_labelled_rows_and_pairs_where_a_prompt_has_both(tmp_path):
    path = tmp_path / "thumbs.csv"
    path.write_text(
        "id,prompt,completion,label,thumbs,response\n"
        "u1,What is 2+2?,It is four of course.,true,,\n"
        "d1,What is 2+2?,It is five surely.,false,,\n"
        "d2,What is 2+2?,No.,,down,\n"  # short, but a bad answer may be short
        "u2,Name a colour.,,,up,Blue is a colour.\n"  # `response` and `thumbs: up`; no down answer: no pair
        "x1,Name a colour.,Red.,maybe,,\n"
    )
    read = read_pairs(path, "preferences/thumbs.csv")
    assert [(q["source_line"], q["reason"]) for q in read.quarantine] == [
        (6, "bad_label")
    ]  # the header is line 1
    assert [(r["id"], r["label"]) for r in read.unpaired] == [
        ("u1", True),
        ("d1", False),
        ("d2", False),
        ("u2", True),
    ]

    cfg = PipelineConfig.model_validate({"data": {"decontamination": {"enabled": False}}})
    built = build_pairs({path: "preferences/thumbs.csv"}, None, cfg, [])
    assert [(p["id"], p["messages"][-1]["content"], p["rejected"]) for p in built.kept] == [
        ("u1>d1", "It is four of course.", "It is five surely."),
        ("u1>d2", "It is four of course.", "No."),
    ]
    assert {p["split_id"] for p in built.kept} == {
        built.kept[0]["split_id"]
    }  # one prompt: one side of the split
    assert built.summary["origins"] == {"thumbs": 2}
    assert built.summary["unpaired"] == 4 and built.summary["unpaired_labels"] == {"up": 2, "down": 2}
    assert built.summary["dropped"] == {"bad_label": 1}
    assert kto_rows(built.unpaired)[1] == {
        "prompt": [{"role": "user", "content": "What is 2+2?"}],
        "completion": [{"role": "assistant", "content": "It is five surely."}],
        "label": False,
    }


def test_pairs_split_by_the_stable_hash_of_their_split_id(tmp_path):
    answers = ["First answer here.", "Second answer here.", "Third answer here."]
    rows = [
        {"id": f"list{i}", "prompt": f"q{i}", "responses": answers, "ranks": [1, 2, 3]} for i in range(30)
    ]
    pairs = read_pairs(write(tmp_path / "r.jsonl", rows), "preferences/r.jsonl").records
    train, held_out = split_pairs(pairs, 0.3, seed=0)
    assert len(train) + len(held_out) == 90 and 0 < len(held_out) < 90
    # A list's three pairs fall on one side together, and the same side on every call.
    assert {p["split_id"] for p in train}.isdisjoint({p["split_id"] for p in held_out})
    assert len(held_out) % 3 == 0 and split_pairs(pairs, 0.3, seed=0)[1] == held_out


def write(path, rows):  # noqa: ANN001, ANN201
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
