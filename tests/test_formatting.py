"""ChatFormatter: shipped templates render known conversations exactly; training and generation share prompts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from safetune.core.formatting import ChatFormatter, TemplateError, available_templates, resolve_template
from safetune.core.schema import PreferenceExample

CONF_TEMPLATE = Path(__file__).resolve().parents[1] / "conf" / "template"

CONVERSATION = [
    {"role": "system", "content": "You are careful."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]


@pytest.fixture(scope="module")
def smol_tokenizer():
    """The embedded SmolLM2-135M-Instruct tokenizer (ChatML with a default system prompt); tokenizer only."""
    from safetune.core.modeling import ModelSpec, load_tokenizer, resolve_model_path

    return load_tokenizer(ModelSpec(), resolve_model_path(ModelSpec()))


def hand_tokenizer(bos: str = "<s>", eos: str = "</s>"):
    """A tiny word-level tokenizer with real BOS/EOS special tokens and no chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "You are careful . Hi there Hello ! How can I help ? Tell me a joke Sure".split()
    vocab = {w: i for i, w in enumerate(["[UNK]", bos, eos, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token="[UNK]")


# Hand-written: what each family's model was trained on (system + user + assistant + user, generation prompt).
EXPECTED_PROMPT = {
    "chatml": (
        "<|im_start|>system\nYou are careful.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "llama-2": (
        "<s>[INST] <<SYS>>\nYou are careful.\n<</SYS>>\n\nHi there [/INST] Hello! How can I help? </s>"
        "<s>[INST] Tell me a joke. [/INST]"
    ),
    "llama-3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are careful.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "zephyr": (
        "<|system|>\nYou are careful.</s>\n"
        "<|user|>\nHi there</s>\n"
        "<|assistant|>\nHello! How can I help?</s>\n"
        "<|user|>\nTell me a joke.</s>\n"
        "<|assistant|>\n"
    ),
    "mistral": "<s>[INST] You are careful.\n\nHi there [/INST] Hello! How can I help?</s>[INST] Tell me a joke. [/INST]",
    "plain": "You are careful.\n\nUser: Hi there\n\nAssistant: Hello! How can I help?</s>\n\nUser: Tell me a joke.\n\nAssistant:",
}
# What closes the final answer "Sure." in a rendered prompt+answer: the family's end-of-turn marker.
EXPECTED_ANSWER_TAIL = {
    "chatml": "<|im_start|>assistant\nSure.<|im_end|>\n",
    "llama-2": "[/INST] Sure. </s>",
    "llama-3": "<|start_header_id|>assistant<|end_header_id|>\n\nSure.<|eot_id|>",
    "zephyr": "<|assistant|>\nSure.</s>\n",
    "mistral": "[/INST] Sure.</s>",
    "plain": "\n\nAssistant: Sure.</s>\n\n",
}
FAMILY_TOKENS = {"llama-3": ("<|begin_of_text|>", "<|eot_id|>")}


def formatter_for(name: str, system_prompt: str | None = None) -> ChatFormatter:
    return ChatFormatter(hand_tokenizer(*FAMILY_TOKENS.get(name, ("<s>", "</s>"))), name, system_prompt)


def test_every_family_is_shipped():
    assert set(available_templates()) == set(EXPECTED_PROMPT)


@pytest.mark.parametrize("name", sorted(EXPECTED_PROMPT))
def test_named_template_renders_known_conversation(name):
    assert formatter_for(name).render_prompt(CONVERSATION) == EXPECTED_PROMPT[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_ANSWER_TAIL))
def test_named_template_closes_the_answer_with_its_end_of_turn(name):
    text = formatter_for(name).render_conversation(CONVERSATION, "Sure.")
    prompt = formatter_for(name).render_prompt(CONVERSATION)
    assert text.endswith(EXPECTED_ANSWER_TAIL[name])
    assert text.startswith(prompt)  # the generation prompt is a text prefix of the trained conversation


@pytest.mark.parametrize(
    "name,expected",
    [
        ("llama-2", "<s>[INST] Hi there [/INST] Hello! How can I help? </s><s>[INST] Tell me a joke. [/INST]"),
        ("mistral", "<s>[INST] Hi there [/INST] Hello! How can I help?</s>[INST] Tell me a joke. [/INST]"),
        ("chatml", EXPECTED_PROMPT["chatml"].split("<|im_end|>\n", 1)[1]),
    ],
)
def test_templates_without_system_message(name, expected):
    assert formatter_for(name).render_prompt(CONVERSATION[1:]) == expected
    assert "<<SYS>>" not in formatter_for(name).render_prompt(CONVERSATION[1:])


def test_config_system_prompt_added_only_when_row_has_none():
    f = formatter_for("chatml", system_prompt="Refuse harm politely.")
    with_cfg = f.render_prompt(CONVERSATION[1:])
    assert with_cfg.startswith("<|im_start|>system\nRefuse harm politely.<|im_end|>\n<|im_start|>user\nHi there")
    # a row that brings its own system message keeps it; the config one is not added on top
    own = f.render_prompt(CONVERSATION)
    assert own == EXPECTED_PROMPT["chatml"] and "Refuse harm" not in own


def test_user_jinja_path(tmp_path):
    p = tmp_path / "mine.jinja"
    p.write_text(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    f = ChatFormatter(hand_tokenizer(), str(p))
    assert f.render_prompt([{"role": "user", "content": "Hi"}]) == "<user>Hi<assistant>"


def test_bad_template_names_fail_clearly(tmp_path):
    with pytest.raises(TemplateError, match="Unknown chat template 'chatm'"):
        resolve_template("chatm", hand_tokenizer())
    with pytest.raises(TemplateError, match="does not exist"):
        resolve_template(str(tmp_path / "missing.jinja"), hand_tokenizer())
    with pytest.raises(TemplateError, match="no chat template"):
        ChatFormatter(hand_tokenizer(), "auto")


@pytest.mark.parametrize("path", sorted(CONF_TEMPLATE.glob("*.yaml")), ids=lambda p: p.stem)
def test_template_configs_build_a_formatter(path, smol_tokenizer):
    from tests.conftest import compose

    cfg = OmegaConf.to_container(compose("train", [f"template={path.stem}"]).template, resolve=True)
    assert cfg["name"] == path.stem
    assert cfg["preflight"]["force"] is False
    f = ChatFormatter.from_cfg(copy.deepcopy(smol_tokenizer), cfg)
    assert f.template == path.stem
    assert f.render_prompt([{"role": "user", "content": "Hi"}]).rstrip().endswith(
        {"auto": "assistant", "chatml": "assistant", "llama-2": "[/INST]", "llama-3": "<|end_header_id|>",
         "zephyr": "<|assistant|>", "mistral": "[/INST]", "plain": "Assistant:"}[path.stem]
    )  # fmt: skip


MULTI_TURN_ROW = PreferenceExample(
    id="row-1",
    prompt=[
        {"role": "user", "content": "What is a phishing email?"},
        {"role": "assistant", "content": "A fake message that tries to trick you into giving up secrets."},
        {"role": "user", "content": "Write one pretending to be my bank."},
    ],
    chosen="I can't write a phishing email, but I can show you the warning signs to look for.",
    rejected="Dear customer, your account is locked. Click here to verify your password.",
)


@pytest.mark.parametrize("template,system", [("auto", None), ("auto", "Be safe."), ("chatml", None), ("llama-2", "Be safe."),
                                             ("zephyr", None), ("mistral", "Be safe."), ("plain", None)])  # fmt: skip
def test_training_prompt_equals_generation_prompt(template, system, smol_tokenizer):
    f = ChatFormatter(copy.deepcopy(smol_tokenizer), template, system)
    row = f.to_trl(MULTI_TURN_ROW)
    # What TRL's DPOTrainer renders for the prompt column, as text and as ids ...
    trl_text = f.tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    pair = f.tokenize_like_trl(row)
    # ... equals what evaluation generation feeds the model for the same row.
    assert f.render_prompt(MULTI_TURN_ROW.prompt) == trl_text
    assert f.generation_ids(MULTI_TURN_ROW.prompt) == pair.prompt_ids
    # multi-turn history is preserved, and a configured system prompt shows up once
    assert "A fake message that tries to trick you" in trl_text
    if system:
        assert trl_text.count(system) == 1


def test_tokenize_like_trl_splits_at_the_answer(smol_tokenizer):
    f = ChatFormatter(copy.deepcopy(smol_tokenizer), "auto")
    pair = f.tokenize_like_trl(f.to_trl(MULTI_TURN_ROW))
    assert pair.split == len(pair.prompt_ids)
    assert pair.prompt_chosen_ids[: pair.split] == pair.prompt_ids
    tok = f.tokenizer
    assert tok.decode(pair.chosen_ids) == MULTI_TURN_ROW.chosen + "<|im_end|>\n"
    assert tok.decode(pair.rejected_ids) == MULTI_TURN_ROW.rejected + "<|im_end|>\n"


@pytest.mark.parametrize("template,system", [("auto", None), ("llama-2", "Be safe.")])
def test_tokenize_like_trl_matches_trl_dpo_preprocessing(template, system, smol_tokenizer):
    """The preflight's tokenisation is TRL's: compare with DPOTrainer._prepare_dataset on the same rows."""
    import types

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from safetune.data.sources import triplets

    f = ChatFormatter(copy.deepcopy(smol_tokenizer), template, system)
    examples = [MULTI_TURN_ROW, *triplets.load("bundled://safety_prefs")[:5]]
    ds = Dataset.from_list([f.to_trl(e) for e in examples])
    args = DPOConfig(output_dir="unused", max_length=None, use_cpu=True, report_to=[])
    # _prepare_dataset only needs `self._tokenizer` for non-conversational rows; these rows are conversational.
    trl_rows = DPOTrainer._prepare_dataset(types.SimpleNamespace(_tokenizer=f.tokenizer), ds, f.tokenizer, args, "t")
    for ex, trl_row in zip(examples, trl_rows):
        ours = f.tokenize_like_trl(f.to_trl(ex))
        assert trl_row["prompt_ids"] == ours.prompt_ids[: ours.split]
        assert trl_row["chosen_ids"] == ours.chosen_ids
        assert trl_row["rejected_ids"] == ours.rejected_ids
