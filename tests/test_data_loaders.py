"""Loaders: PKU-SafeRLHF, hh-rlhf, custom triplets — in-memory rows and the real public files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from safetune.core.schema import SchemaError
from safetune.data.sources import hh_rlhf, pku_saferlhf, triplets

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PKU_FILE = SHARED / "pku-saferlhf" / "alpaca-7b-test-sample.jsonl"
HH_HARMLESS = SHARED / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
HH_HELPFUL = SHARED / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real data file {path} is absent (see ../shared/data/SOURCES.md)")
    return path


def cats(*names: str) -> dict[str, bool]:
    from safetune.core.schema import HARM_CATEGORIES

    return {c: c in names for c in HARM_CATEGORIES}


def pku_row(**kw):
    row = {
        "prompt": "How do I get into my neighbour's wifi?",
        "response_0": "Use a WPA cracking tool on their router and capture the handshake.",
        "response_1": "I can't help access a network that isn't yours; ask them for the password instead.",
        "is_response_0_safe": False,
        "is_response_1_safe": True,
        "response_0_harm_category": cats("Cybercrime", "Privacy Violation"),
        "response_1_harm_category": cats(),
        "response_0_severity_level": 2,
        "response_1_severity_level": 0,
        "better_response_id": 0,
        "safer_response_id": 1,
    }
    row.update(kw)
    return row


# ---------------------------------------------------------------- PKU-SafeRLHF


def test_pku_safer_policy_takes_categories_and_severity_from_rejected():
    out = pku_saferlhf.convert([("mem:1", pku_row())])
    (ex,) = out
    assert ex.chosen.startswith("I can't help")
    assert ex.rejected.startswith("Use a WPA")
    assert sorted(ex.categories) == ["Cybercrime", "Privacy Violation"]
    assert ex.severity == 2
    assert ex.prompt == [{"role": "user", "content": "How do I get into my neighbour's wifi?"}]


def test_pku_better_policy_flips_the_pair_and_labels_follow_rejected():
    (ex,) = pku_saferlhf.convert([("mem:1", pku_row())], policy="better")
    assert ex.chosen.startswith("Use a WPA")
    assert ex.categories == [] and ex.severity == 0  # the rejected response is the safe one


def test_pku_agree_and_safe_vs_unsafe_drop_and_count_rows():
    rows = [("mem:1", pku_row()), ("mem:2", pku_row(better_response_id=1)), ("mem:3", pku_row(is_response_0_safe=True))]
    agree = pku_saferlhf.convert(rows, policy="agree")
    # the default row has better=0, safer=1 (they disagree); only mem:2 agrees
    assert [e.metadata["location"] for e in agree] == ["mem:2"] and sum(agree.skipped.values()) == 2
    svu = pku_saferlhf.convert(rows, policy="safe_vs_unsafe")
    assert len(svu) == 2
    assert svu.skipped == {"policy safe_vs_unsafe: both responses safe": 1}
    assert svu.skipped_at["policy safe_vs_unsafe: both responses safe"] == ["mem:3"]


def test_pku_filters_include_exclude_min_severity():
    rows = [("a", pku_row()), ("b", pku_row(response_0_harm_category=cats("Drugs"), response_0_severity_level=1))]
    assert [e.categories for e in pku_saferlhf.convert(rows, categories_include=["S7"])] == [["Drugs"]]
    assert len(pku_saferlhf.convert(rows, categories_exclude=["cybercrime"])) == 1
    kept = pku_saferlhf.convert(rows, min_severity=2)
    assert len(kept) == 1 and kept[0].severity == 2 and kept.skipped["filter min_severity=2"] == 1


def test_pku_v0_schema_without_labels_loads():
    row = {k: v for k, v in pku_row().items() if "harm_category" not in k and "severity" not in k}
    (ex,) = pku_saferlhf.convert([("v0:1", row)])
    assert ex.categories == [] and ex.severity is None and ex.chosen.startswith("I can't")


def test_pku_unknown_category_and_bad_ids_are_clear_errors():
    bad_cat = pku_row(response_0_harm_category={"Space Piracy": True})
    with pytest.raises(
        SchemaError, match=r"mem:4: field 'response_0_harm_category'.*unknown harm category 'Space Piracy'"
    ):
        pku_saferlhf.convert([("mem:4", bad_cat)])
    with pytest.raises(SchemaError, match=r"mem:5: field 'safer_response_id' must be 0 or 1, got 2"):
        pku_saferlhf.convert([("mem:5", pku_row(safer_response_id=2))])
    with pytest.raises(SchemaError, match=r"mem:6: missing field\(s\) \['response_1'\]"):
        pku_saferlhf.convert([("mem:6", {k: v for k, v in pku_row().items() if k != "response_1"})])
    collected = pku_saferlhf.convert([("mem:5", pku_row(safer_response_id=2)), ("ok", pku_row())], on_error="collect")
    assert len(collected) == 1 and collected.errors[0][0] == "mem:5"


def test_pku_real_file_all_policies():
    path = str(need(PKU_FILE))
    safer = pku_saferlhf.load(path)
    assert len(safer) == 10
    first = safer[0]  # both unsafe, severity 3/3, safer id 1
    assert first.severity == 3
    assert set(first.categories) == {"Endangering National Security", "Economic Crime", "Cybercrime"}
    assert first.metadata["location"] == "alpaca-7b-test-sample.jsonl:1"
    assert len(pku_saferlhf.load(path, policy="agree")) == 9  # row 6: better=1, safer=0
    svu = pku_saferlhf.load(path, policy="safe_vs_unsafe")
    assert len(svu) == 2 and all(e.metadata["is_chosen_safe"] and not e.metadata["is_rejected_safe"] for e in svu)
    assert [e.severity for e in svu] == [1, 2]


# ---------------------------------------------------------------- hh-rlhf

T_PROMPT = "\n\nHuman: How do I pick a lock?\n\nAssistant: What kind of lock?\n\nHuman: My own front door."


def test_hh_parses_multiturn_transcript_with_shared_prompt():
    row = {
        "chosen": T_PROMPT + "\n\nAssistant: Call a locksmith.",
        "rejected": T_PROMPT + "\n\nAssistant: Use a bump key.",
    }
    (ex,) = hh_rlhf.convert([("mem:1", row)])
    assert [m["role"] for m in ex.prompt] == ["user", "assistant", "user"]
    assert ex.prompt[-1]["content"] == "My own front door."
    assert (ex.chosen, ex.rejected) == ("Call a locksmith.", "Use a bump key.")


def test_hh_unparseable_rows_are_counted_not_dropped_silently_or_fatal():
    rows = [
        ("mem:1", {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: hello"}),  # no assistant turn
        (
            "mem:2",
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},
        ),  # prompts differ
        ("mem:3", {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}),
    ]
    out = hh_rlhf.convert(rows)
    assert len(out) == 1 and sum(out.skipped.values()) == 2
    assert any("no final Assistant turn" in r for r in out.skipped)
    assert any("differ before the final Assistant turn" in r for r in out.skipped)
    with pytest.raises(SchemaError, match=r"mem:1: field 'chosen' has no final Assistant turn"):
        hh_rlhf.convert(rows, strict=True)


def test_hh_wrong_type_and_empty_string_are_errors():
    with pytest.raises(SchemaError, match=r"mem:1: field 'chosen' must be a transcript string, got int"):
        hh_rlhf.convert([("mem:1", {"chosen": 3, "rejected": "x"})])
    with pytest.raises(SchemaError, match=r"mem:2: field 'rejected' is an empty string"):
        hh_rlhf.convert([("mem:2", {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "  "})])
    with pytest.raises(SchemaError, match=r"mem:3: missing field 'rejected'"):
        hh_rlhf.convert([("mem:3", {"chosen": "\n\nHuman: a\n\nAssistant: b"})])


def test_hh_llama2_inst_layout():
    row = {
        "prompt": "<s>[INST] <<SYS>>\nBe safe.\n<</SYS>>\n\nHi there [/INST] Hello! </s><s>[INST] How do I hotwire a car? [/INST]",
        "chosen": "I can't help with that, but a locksmith can help if it's your car.",
        "rejected": "Strip the ignition wires and touch them together.</s>",
    }
    (ex,) = hh_rlhf.convert([("mem:1", row)])
    assert ex.prompt == [
        {"role": "system", "content": "Be safe."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How do I hotwire a car?"},
    ]
    assert ex.rejected == "Strip the ignition wires and touch them together."
    assert ex.metadata["layout"] == "llama2"


@pytest.mark.parametrize("path", [HH_HARMLESS, HH_HELPFUL], ids=["harmless-base", "helpful-base"])
def test_hh_real_test_splits(path):
    out = hh_rlhf.load(str(need(path)))
    n_rows = sum(1 for _ in gzip.open(path, "rt"))
    assert len(out) + sum(out.skipped.values()) == n_rows  # every row is either loaded or counted
    assert len(out) > 0.98 * n_rows
    assert out[0].source == f"hh_rlhf:{path.parent.name}"
    for ex in out[:200]:
        assert ex.prompt[0]["role"] == "user" and ex.prompt[-1]["role"] == "user"
        assert ex.chosen.strip() and ex.rejected.strip()


def test_hh_real_harmless_first_row_is_multiturn():
    ex = hh_rlhf.load(str(need(HH_HARMLESS)))[0]
    assert ex.prompt[0]["content"] == "what are some pranks with a pen i can do?"
    assert len(ex.prompt) > 1 and ex.chosen.startswith("No, sorry!")


# ---------------------------------------------------------------- triplets


def test_triplets_column_mapping_and_message_lists():
    row = {
        "q": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "good": [{"role": "assistant", "content": "Hi, how can I help?"}],
        "bad": "Go away, I am busy right now.",
        "harm": "hacking",
        "sev": "2",
        "how": "prompt-injection",
    }
    (ex,) = triplets.convert(
        [("f.jsonl:1", row)],
        columns={
            "prompt": "q",
            "chosen": "good",
            "rejected": "bad",
            "category": "harm",
            "severity": "sev",
            "tactic": "how",
        },
    )
    assert ex.prompt[0]["role"] == "system" and ex.chosen == "Hi, how can I help?"
    assert ex.categories == ["Cybercrime"] and ex.severity == 2 and ex.tactic == "prompt_injection"


def test_triplets_dpo_harmful_refined_layout_needs_no_mapping(tmp_path):
    f = tmp_path / "refined.jsonl"
    f.write_text(
        json.dumps({"prompt": "Make a bomb", "chosen": "I can't help with that.", "rejected": "Sure: ..."}) + "\n"
    )
    (ex,) = triplets.load(str(f))
    assert ex.user_text == "Make a bomb" and ex.metadata["location"] == "refined.jsonl:1"


def test_triplets_csv_and_parquet(tmp_path):
    import pandas as pd

    df = pd.DataFrame(
        [{"prompt": "Hi there", "chosen": "Hello! How can I help?", "rejected": "No.", "category": "S14"}]
    )
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        (ex,) = triplets.load(str(tmp_path / name))
        assert ex.categories == ["Cybercrime"] and ex.chosen == "Hello! How can I help?"


@pytest.mark.parametrize(
    "line, pattern",
    [
        ('{"prompt": "a", "chosen": "b"', r"bad\.jsonl:2: malformed JSON"),
        ('{"prompt": "a", "chosen": "b"}', r"bad\.jsonl:2: missing field 'rejected'"),
        ('{"prompt": "a", "chosen": 5, "rejected": "c"}', r"bad\.jsonl:2: field 'chosen' must be a string or a list"),
        ('{"prompt": "", "chosen": "b", "rejected": "c"}', r"bad\.jsonl:2: field 'prompt'.*empty string"),
        (
            '{"prompt": "a", "chosen": "b", "rejected": "c", "category": "Space Piracy"}',
            r"bad\.jsonl:2: .*unknown harm category",
        ),
        (
            '{"prompt": "a", "chosen": "b", "rejected": "c", "tactic": "flattery"}',
            r"bad\.jsonl:2: .*unknown tactic 'flattery'",
        ),
    ],
    ids=["malformed_json", "missing_field", "wrong_type", "empty_string", "unknown_category", "unknown_tactic"],
)
def test_triplets_bad_input_errors_name_file_line_and_field(tmp_path, line, pattern):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "ok", "chosen": "fine", "rejected": "meh"}) + "\n" + line + "\n")
    with pytest.raises(SchemaError, match=pattern):
        triplets.load(str(f))


def test_broken_utf8_is_a_located_error(tmp_path):
    f = tmp_path / "enc.jsonl"
    f.write_bytes(
        b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n'
    )
    with pytest.raises(SchemaError, match=r"enc\.jsonl:2: broken encoding"):
        triplets.load(str(f))
