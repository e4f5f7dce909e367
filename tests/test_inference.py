"""llm_tuning/inference.py: what an adapter directory records decides how it is loaded, a flag wins."""

from __future__ import annotations

import pytest

from llm_tuning import inference
from llm_tuning.cli import UserError
from llm_tuning.run_config import save_run_config
from llm_tuning.tiny_models import CHECKOUT_DIR, SHIPPED_CORPUS, corpus_files


def fake_adapter(tmp_path, **run_config):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "org/remote-code-model"}')
    save_run_config(adapter, template="qwen", **run_config)
    return adapter


@pytest.fixture
def loads(monkeypatch):
    """What load_chat_model asks the loaders for (the loaders themselves are tested elsewhere)."""
    seen = {}

    class Model:
        def eval(self):
            return self

    monkeypatch.setattr(inference, "load_tokenizer", lambda path, trust: seen.update(tokenizer=(path, trust)))
    monkeypatch.setattr(inference, "load_model", lambda base, dtype, trust, **rope: seen.update(
        model=(base, dtype, trust, rope)) or Model())
    monkeypatch.setattr(inference, "load_adapters", lambda model, paths, weights: model)
    return seen


def parse(*argv):
    import argparse

    parser = argparse.ArgumentParser()
    inference.add_model_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_the_adapters_recorded_remote_code_and_rope_are_used(tmp_path, loads):
    adapter = fake_adapter(tmp_path, trust_remote_code=True, rope_scaling="linear", rope_factor=4.0)
    _, _, template = inference.load_chat_model(parse("--adapter", adapter))
    assert loads["tokenizer"] == (str(adapter), True)
    assert loads["model"] == ("org/remote-code-model", "auto", True, {"rope_scaling": "linear", "rope_factor": 4.0})
    assert template.name == "qwen"


def test_flags_win_over_the_record(tmp_path, loads):
    adapter = fake_adapter(tmp_path, trust_remote_code=True)
    _, _, template = inference.load_chat_model(parse("--adapter", adapter, "--trust_remote_code", "false",
                                                     "--template", "llama3", "--dtype", "float32"))
    assert loads["tokenizer"] == (str(adapter), False)
    assert loads["model"][1:3] == ("float32", False)
    assert template.name == "llama3"


def test_an_unrecorded_run_does_not_trust_remote_code(tmp_path, loads):
    adapter = fake_adapter(tmp_path)
    inference.load_chat_model(parse("--adapter", adapter))
    assert loads["tokenizer"][1] is False and loads["model"][2] is False


def test_run_settings_read_the_record_and_flags_win(tmp_path):
    from llm_tuning.run_config import run_settings

    adapter = fake_adapter(tmp_path, trust_remote_code=True, rope_scaling="yarn", rope_factor=4.0)
    recorded = run_settings(adapter)
    assert (recorded.trust_remote_code, recorded.rope, recorded.template) == (
        True, {"rope_scaling": "yarn", "rope_factor": 4.0}, "qwen")
    flagged = run_settings(adapter, trust_remote_code=False, rope_scaling="linear", rope_factor=8.0)
    assert (flagged.trust_remote_code, flagged.rope) == (False, {"rope_scaling": "linear", "rope_factor": 8.0})
    unrecorded = run_settings(tmp_path / "hub-model")  # no llm_tuning.json: remote code off, no RoPE change
    assert (unrecorded.recorded, unrecorded.trust_remote_code, unrecorded.rope, unrecorded.template) == (
        {}, False, {"rope_scaling": None, "rope_factor": 2.0}, None)


def test_nothing_to_load_is_one_sentence():
    with pytest.raises(UserError, match="pass --base"):
        inference.load_chat_model(parse())


def test_the_tiny_tokenizer_corpus_is_the_fixed_shipped_list(tmp_path, monkeypatch):
    assert corpus_files() == [CHECKOUT_DIR / name for name in SHIPPED_CORPUS]
    monkeypatch.setattr("llm_tuning.tiny_models.CHECKOUT_DIR", tmp_path)  # an installed package: no data/ beside it
    with pytest.raises(FileNotFoundError, match="pass corpus_dir"):
        corpus_files()
