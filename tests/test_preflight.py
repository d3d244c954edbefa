"""Preflight: the embedded model's template passes; each injected template/data defect is caught by its rule."""

from __future__ import annotations

import copy
import json

import pytest

from safetune.cli.data import run_preflight_cli
from safetune.core.formatting import ChatFormatter, default_system_prompts
from safetune.core.schema import PreferenceExample
from safetune.train.preflight import (
    FAIL,
    PASS,
    WARN,
    PreflightError,
    PreflightSettings,
    preflight_training_rows,
    run_preflight,
    token_boundaries,
)

CHATML_MSG = "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
GEN = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def smol_tokenizer():
    """The embedded SmolLM2-135M-Instruct tokenizer (ChatML with a default system prompt); tokenizer only."""
    from safetune.core.modeling import ModelSpec, load_tokenizer, resolve_model_path

    return load_tokenizer(ModelSpec(), resolve_model_path(ModelSpec()))


@pytest.fixture(scope="module")
def bundled_rows():
    from safetune.data.sources import triplets

    return triplets.load("bundled://safety_prefs")


def rows(system: str | None = None, n: int = 6) -> list[PreferenceExample]:
    out = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Question {i}: how do I pick a strong password?"}]
        if system:
            prompt.insert(0, {"role": "system", "content": system})
        out.append(
            PreferenceExample(
                id=f"r{i}",
                prompt=prompt,
                chosen="Use a long passphrase of random words and a password manager.",
                rejected="Just use your birthday, nobody will guess it.",
            )
        )
    return out


def with_template(tok, source: str, system_prompt: str | None = None) -> ChatFormatter:
    t = copy.deepcopy(tok)
    t.chat_template = source
    return ChatFormatter(t, "auto", system_prompt)


def statuses(report) -> dict[str, str]:
    return {r.rule: r.status for r in report.results}


def only_failure(report, rule: str) -> None:
    assert {k for k, v in statuses(report).items() if v == FAIL} == {rule}, statuses(report)


def test_embedded_template_passes_preflight(smol_tokenizer, bundled_rows):
    f = ChatFormatter(copy.deepcopy(smol_tokenizer), "auto")
    report = run_preflight(f, bundled_rows, PreflightSettings(sample=48, max_length=256))
    assert report.passed, report.error_message()
    assert set(statuses(report).values()) == {PASS}
    assert report.n_sampled == 48 and report.n_rows == len(bundled_rows)
    assert report.probe.eot_ids == [smol_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert report.probe.default_systems == [DEFAULT_SYSTEM]
    assert report.probe.bos_per_turn  # SmolLM's BOS is <|im_start|>, which opens every turn
    assert report.stats["chosen"]["min"] > 0 and report.stats["chosen"]["max"] >= report.stats["chosen"]["p50"]
    report.raise_if_failed()  # does not raise


def test_embedded_template_passes_with_config_system_prompt(smol_tokenizer):
    f = ChatFormatter(copy.deepcopy(smol_tokenizer), "auto", system_prompt="Refuse harmful requests politely.")
    report = run_preflight(f, rows(), PreflightSettings(max_length=256))
    assert report.passed, report.error_message()


def test_doubled_system_prompt_in_template(smol_tokenizer):
    # the template prints the system message's content twice
    src = (
        "{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ '<|im_start|>system\\n' + message['content'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% else %}" + CHATML_MSG + "{% endif %}{% endfor %}" + GEN
    )
    report = run_preflight(with_template(smol_tokenizer, src), rows(system="Be safe and kind."), PreflightSettings())
    only_failure(report, "system-once")
    r = report.result("system-once")
    assert (r.failing, r.checked, r.example_id) == (6, 6, "r0")
    assert "appears 2 times" in r.detail


def test_default_system_prompt_added_on_top_of_explicit_one(smol_tokenizer):
    # the template always emits its default system prompt, even when the row has its own
    src = (
        "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
        "{% for message in messages %}" + CHATML_MSG + "{% endfor %}" + GEN
    )
    f = with_template(smol_tokenizer, src, system_prompt="Refuse harmful requests politely.")
    report = run_preflight(f, rows(), PreflightSettings())
    only_failure(report, "system-once")
    assert "default system prompt" in report.result("system-once").detail
    # without an explicit system prompt the default alone is fine
    assert run_preflight(with_template(smol_tokenizer, src), rows(), PreflightSettings()).passed


def test_missing_end_of_turn(smol_tokenizer):
    # assistant turns are not closed by <|im_end|>
    src = (
        "{% for message in messages %}{% if message['role'] == 'assistant' %}"
        "{{ '<|im_start|>assistant\\n' + message['content'] + '\\n' }}"
        "{% else %}" + CHATML_MSG + "{% endif %}{% endfor %}" + GEN
    )
    report = run_preflight(with_template(smol_tokenizer, src), rows(), PreflightSettings())
    only_failure(report, "end-of-turn")
    assert report.probe.eot_ids == []
    assert "no end-of-turn or EOS" in report.result("end-of-turn").detail


def test_doubled_end_of_turn_in_data(smol_tokenizer):
    data = rows()
    data[2].chosen += "<|im_end|>"  # a response that already carries the end-of-turn marker
    report = run_preflight(ChatFormatter(copy.deepcopy(smol_tokenizer), "auto"), data, PreflightSettings())
    only_failure(report, "end-of-turn")
    r = report.result("end-of-turn")
    assert (r.failing, r.example_id) == (1, "r2")
    assert "holds 2 end-of-turn/EOS tokens" in r.detail


def test_prefix_mismatch(smol_tokenizer):
    # the generation prompt ends with a trailing space that merges into the answer's first token
    src = (
        "{% for message in messages %}{% if message['role'] == 'assistant' %}"
        "{{ 'Assistant: ' + message['content'] + '<|im_end|>\\n' }}{% else %}" + CHATML_MSG + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
    )
    report = run_preflight(with_template(smol_tokenizer, src), rows(), PreflightSettings())
    only_failure(report, "prompt-prefix")
    r = report.result("prompt-prefix")
    assert r.failing == 6 and "ends ' '" in r.detail
    assert report.example.split == len(report.example.prompt_ids) - 1  # TRL would cut the prompt's last token


def test_doubled_bos(smol_tokenizer):
    t = copy.deepcopy(smol_tokenizer)
    t.bos_token = "<|endoftext|>"  # a BOS that is not a turn marker
    t.chat_template = "{{ bos_token }}{{ bos_token }}{% for message in messages %}" + CHATML_MSG + "{% endfor %}" + GEN
    report = run_preflight(ChatFormatter(t, "auto"), rows(), PreflightSettings())
    only_failure(report, "bos-once")
    assert "BOS twice" in report.result("bos-once").detail
    t.chat_template = "{{ bos_token }}{% for message in messages %}" + CHATML_MSG + "{% endfor %}" + GEN
    assert run_preflight(ChatFormatter(t, "auto"), rows(), PreflightSettings()).passed


def test_truncation_beyond_max_length(smol_tokenizer):
    f = ChatFormatter(copy.deepcopy(smol_tokenizer), "auto")
    data = rows(n=10)
    pair = f.tokenize_like_trl(f.to_trl(data[0]))
    max_length = pair.split + 5  # keeps 5 response tokens of every row
    report = run_preflight(f, data, PreflightSettings(max_length=max_length))
    only_failure(report, "truncation")
    assert report.truncation["rows_truncated"] == 10 and report.truncation["rows_dropped"] == 0
    assert report.truncation["tokens_lost_max"] == len(pair.chosen_ids) - 5  # chosen is the longer reply
    # trainer.max_completion_length cuts responses on purpose: within it, nothing counts as lost
    report = run_preflight(f, data, PreflightSettings(max_length=max_length, max_completion_length=5))
    assert report.result("truncation").status != FAIL and report.truncation["rows_truncated"] == 0
    report = run_preflight(f, data, PreflightSettings(max_length=max_length, max_completion_length=6))
    assert report.truncation["rows_truncated"] == 10 and report.truncation["tokens_lost_max"] == 1

    # one long row out of 40 (2.5%) is a warning under the default 5% limit, not a failure
    many = rows(n=40)
    many[7].chosen = " ".join(["word"] * 200)
    report = run_preflight(f, many, PreflightSettings(max_length=128, sample=0))
    assert report.result("truncation").status == WARN and report.passed
    assert report.result("truncation").example_id == "r7"

    # a prompt that alone fills max_length: TRL drops the row -> failure
    many[3].prompt = [{"role": "user", "content": " ".join(["long"] * 200)}]
    report = run_preflight(f, many, PreflightSettings(max_length=128, sample=0))
    assert report.result("truncation").status == FAIL and report.truncation["rows_dropped"] == 1


def test_failure_message_names_template_rule_and_row(smol_tokenizer):
    src = "{% for message in messages %}{{ message['content'] + '\\n' }}{% endfor %}"
    report = run_preflight(with_template(smol_tokenizer, src), rows(), PreflightSettings())
    with pytest.raises(PreflightError) as e:
        report.raise_if_failed()
    msg = str(e.value)
    assert "template 'auto'" in msg and "rule 'end-of-turn'" in msg and "row 'r0'" in msg and "force=true" in msg
    report.raise_if_failed(force=True)  # the expert override only logs


def test_training_hook_respects_force_and_enabled(smol_tokenizer):
    src = "{% for message in messages %}{{ message['content'] + '\\n' }}{% endfor %}"
    f = with_template(smol_tokenizer, src)
    trainer = {"max_length": 256}
    with pytest.raises(PreflightError, match="rule 'end-of-turn'"):
        preflight_training_rows(f, rows(), {"preflight": {"sample": 4}}, trainer)
    report = preflight_training_rows(f, rows(), {"preflight": {"sample": 4, "force": True}}, trainer)
    assert report is not None and not report.passed and report.n_sampled == 4
    assert preflight_training_rows(f, rows(), {"preflight": {"enabled": False}}, trainer) is None
    with pytest.raises(ValueError, match="unknown key"):
        preflight_training_rows(f, rows(), {"preflight": {"smaple": 4}}, trainer)


def test_token_boundaries_show_every_token(smol_tokenizer):
    f = ChatFormatter(copy.deepcopy(smol_tokenizer), "auto")
    pair = f.tokenize_like_trl(f.to_trl(rows(n=1)[0]))
    shown = token_boundaries(f.tokenizer, pair.prompt_chosen_ids, pair.split, sep="\x1f")
    prompt_part, answer_part = shown.split(" ||> ")
    assert len(prompt_part.split("\x1f")) == pair.split  # one piece per prompt token
    assert len(answer_part.split("\x1f")) == len(pair.chosen_ids)
    assert answer_part.split("\x1f")[-2:] == ["<|im_end|>", "\n"]
    assert (
        answer_part.replace("\x1f", "") == "Use a long passphrase of random words and a password manager.<|im_end|>\n"
    )
    assert "|" in token_boundaries(f.tokenizer, pair.chosen_ids)  # default separator


def test_default_system_prompt_detection():
    assert default_system_prompts("{{ 'Cutting Knowledge Date: ' + date }}{{ '<|im_start|>user\\n' }}") == []
    assert default_system_prompts(
        "{{ '<|im_start|>system\\nYou are Qwen, a model made to help people.<|im_end|>' }}"
    ) == ["You are Qwen, a model made to help people."]


def write_jsonl(path, data: list[PreferenceExample]) -> None:
    path.write_text(
        "".join(
            json.dumps({"id": e.id, "prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected}) + "\n"
            for e in data
        )
    )


def flat(text: str) -> str:
    """Rich wraps lines to the terminal width; compare with whitespace collapsed."""
    return " ".join(text.split())


def test_cli_reports_and_exits(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    write_jsonl(data, rows(n=5))
    assert run_preflight_cli(["--data", str(data), "--template", "chatml", "--max-length", "512"]) == 0
    out = flat(capsys.readouterr().out)
    assert "template=chatml (5/5 rows)" in out and "Preflight passed" in out and "Example row 'r0'" in out
    # llama-3's <|eot_id|> is not a token of this tokenizer: the end-of-turn rule fails, --force overrides
    assert run_preflight_cli(["-d", str(data), "--template", "llama-3", "--sample", "3"]) == 1
    out = flat(capsys.readouterr().out)
    assert "end-of-turn" in out and "FAIL" in out and "template 'llama-3'" in out
    assert run_preflight_cli(["-d", str(data), "--template", "llama-3", "--force"]) == 0
    assert run_preflight_cli(["-d", str(tmp_path / "nope.jsonl")]) == 2
    captured = capsys.readouterr()
    assert "no such file" in flat(captured.out + captured.err)


def test_cli_on_data_config(capsys):
    assert run_preflight_cli(["--data", "bundled", "--sample", "8"]) == 0
    assert "template=auto (8/" in flat(capsys.readouterr().out)


def test_training_stops_before_loading_the_model(tmp_path, monkeypatch):
    """safetune-train runs the preflight on the training rows and fails with its message before any model loads."""
    from safetune.cli.data import _compose
    from safetune.train import recipe as train

    def no_model(*a, **k):
        raise AssertionError("the model must not load when the preflight fails")

    monkeypatch.setattr(train, "load_model", no_model)
    cfg = _compose(["template=llama-3", f"run_dir={tmp_path / 'run'}", "template.preflight.sample=4"])
    with pytest.raises(PreflightError, match="(?s)template 'llama-3'.*rule 'end-of-turn'"):
        train.run_train(cfg)
