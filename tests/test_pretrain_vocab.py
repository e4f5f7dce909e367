"""Vocabulary extension: sentencepiece training, merging into BPE and sentencepiece bases, mean init."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_tuning.cli import UserError
from llm_tuning.pretrain.shards import read_texts
from llm_tuning.pretrain.vocab import (
    check_old_ids_unchanged,
    mean_init_new_embeddings,
    merge_into_sentencepiece,
    old_sub_token_ids,
    sentencepiece_pieces,
    token_count,
    train_sentencepiece,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT / "pretrain" / "data"
ZH_TEXTS = list(read_texts(DATA / "zh_general.jsonl"))
EN_TEXTS = list(read_texts(DATA / "en_general.jsonl"))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "pretrain" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def zh_sp(tmp_path_factory) -> Path:
    """train_tokenizer.py on the shipped Chinese and English corpus."""
    out = tmp_path_factory.mktemp("sp")
    script = load_script("train_tokenizer")
    script.main(script.parse_args(["--inputs", str(DATA / "zh_general.jsonl"), str(DATA / "zh_medical.jsonl"),
                                   str(DATA / "en_general.jsonl"), "--vocab_size", "600", "--output_dir", str(out)]))
    return out / "tokenizer.model"


@pytest.fixture(scope="module")
def merge_run(tiny_qwen2, zh_sp, tmp_path_factory) -> tuple[Path, str]:
    """merge_tokenizer.py into the tiny Qwen2's byte-level BPE: (output folder, what it printed)."""
    out = tmp_path_factory.mktemp("merged") / "tokenizer"
    script = load_script("merge_tokenizer")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        script.main(script.parse_args(["--base_tokenizer", str(tiny_qwen2), "--sp_model", str(zh_sp),
                                       "--output_dir", str(out)]))
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def merged_bpe(merge_run) -> Path:
    return merge_run[0]


def test_sentencepiece_learns_multi_character_chinese_pieces(zh_sp):
    pieces = sentencepiece_pieces(zh_sp.read_bytes())
    assert 550 <= len(pieces) <= 600
    for word in ["工程师", "科学家", "研究表明", "看电影"]:
        assert word in pieces or "▁" + word in pieces


def test_merged_bpe_tokenizer_keeps_old_ids_and_shortens_chinese(tiny_qwen2, merge_run):
    merged_bpe, printed = merge_run
    old, new = AutoTokenizer.from_pretrained(tiny_qwen2), AutoTokenizer.from_pretrained(merged_bpe)
    old_vocab, new_vocab = old.get_vocab(), new.get_vocab()
    assert all(new_vocab[token] == index for token, index in old_vocab.items())
    assert sorted(new_vocab.values()) == list(range(len(new)))  # new ids follow the old ones, no gaps
    assert len(new) > len(old) + 400
    assert new.special_tokens_map == old.special_tokens_map and new.chat_template == old.chat_template

    ratio = token_count(new, ZH_TEXTS) / token_count(old, ZH_TEXTS)
    print(f"\nshipped Chinese text: merged/base token ratio {ratio:.3f}")
    assert ratio < 0.5
    assert token_count(new, EN_TEXTS) <= token_count(old, EN_TEXTS)
    for text in ZH_TEXTS[:50] + EN_TEXTS[:50]:  # the merged tokenizer still reproduces the text exactly
        assert new.decode(new.encode(text, add_special_tokens=False)) == text
    assert len(new.encode("研究表明", add_special_tokens=False)) == 1
    assert "old ids unchanged" in printed and f"vocabulary {len(old)} -> {len(new)}" in printed
    assert (f"zh_general.jsonl: {token_count(old, ZH_TEXTS)} -> {token_count(new, ZH_TEXTS)} tokens "
            f"(ratio {ratio:.3f}") in printed


def test_merge_into_a_sentencepiece_llama_style_tokenizer(zh_sp, tmp_path):
    """A LLaMA-style base: an English-only sentencepiece model with byte fallback as `tokenizer.model`."""
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    base_proto = train_sentencepiece(EN_TEXTS, vocab_size=500, byte_fallback=True)
    (base_dir / "tokenizer.model").write_bytes(base_proto)
    (base_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    out = tmp_path / "merged"
    script = load_script("merge_tokenizer")
    script.main(script.parse_args(["--base_tokenizer", str(base_dir), "--sp_model", str(zh_sp),
                                   "--output_dir", str(out)]))

    merged_pieces = sentencepiece_pieces((out / "tokenizer.model").read_bytes())
    base_pieces = sentencepiece_pieces(base_proto)
    assert merged_pieces[: len(base_pieces)] == base_pieces  # appended, never reordered
    old, new = AutoTokenizer.from_pretrained(base_dir), AutoTokenizer.from_pretrained(out)
    check_old_ids_unchanged(old, new)
    assert (out / "tokenizer.json").is_file()
    ratio = token_count(new, ZH_TEXTS) / token_count(old, ZH_TEXTS)
    print(f"\nsentencepiece base, shipped Chinese text: merged/base token ratio {ratio:.3f}")
    assert ratio < 0.6


def test_merging_a_piece_twice_adds_it_once():
    proto = train_sentencepiece(EN_TEXTS, vocab_size=200)
    assert "▁in" in sentencepiece_pieces(proto) and "你好" not in sentencepiece_pieces(proto)
    merged, added = merge_into_sentencepiece(proto, ["你好", "▁in", "你好"])
    assert added == ["你好"]
    assert sentencepiece_pieces(merged) == sentencepiece_pieces(proto) + ["你好"]


def test_extended_embeddings_are_sub_token_means(tiny_qwen2, merged_bpe, tmp_path):
    out = tmp_path / "extended"
    script = load_script("extend_embeddings")
    script.main(script.parse_args(["--base_model", str(tiny_qwen2), "--tokenizer", str(merged_bpe),
                                   "--output_dir", str(out)]))
    old_tok, new_tok = AutoTokenizer.from_pretrained(tiny_qwen2), AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    extended = AutoModelForCausalLM.from_pretrained(out)
    n_old = len(old_tok)
    partial_utf8 = [i for i in range(n_old, len(new_tok)) if "\ufffd" in new_tok.decode([i])]
    assert partial_utf8  # intermediate BPE merges that stop inside a character
    for get in (lambda m: m.get_input_embeddings().weight, lambda m: m.get_output_embeddings().weight):
        old_rows, new_rows = get(base).detach(), get(extended).detach()
        assert new_rows.shape[0] == len(new_tok)
        assert torch.equal(new_rows[:n_old], old_rows)
        for token_id in range(n_old, len(new_tok)):
            # the old tokens that spell the new piece byte for byte (never U+FFFD's bytes)
            sub_ids = old_sub_token_ids(old_tok, new_tok, token_id)
            assert len(sub_ids) >= 2
            assert "".join(old_tok.convert_ids_to_tokens(sub_ids)) == new_tok.convert_ids_to_tokens(token_id)
            torch.testing.assert_close(new_rows[token_id], old_rows[sub_ids].mean(dim=0))
    assert json.loads((out / "vocab_extension.json").read_text())["new_vocab_size"] == len(new_tok)


def test_new_sentencepiece_pieces_are_initialised_without_the_dummy_prefix(zh_sp, tmp_path):
    """On a LLaMA-style base, a word-internal piece such as `我们` is spelled by its own byte
    pieces, not `▁` + those (what encoding its text would give)."""
    from transformers import AutoConfig

    base_dir, merged_dir = tmp_path / "base", tmp_path / "merged"
    for folder in (base_dir, merged_dir):
        folder.mkdir()
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    base_proto = train_sentencepiece(EN_TEXTS, vocab_size=500, byte_fallback=True)
    (base_dir / "tokenizer.model").write_bytes(base_proto)
    (merged_dir / "tokenizer.model").write_bytes(
        merge_into_sentencepiece(base_proto, sentencepiece_pieces(zh_sp.read_bytes()))[0])
    old, new = AutoTokenizer.from_pretrained(base_dir), AutoTokenizer.from_pretrained(merged_dir)
    config = AutoConfig.for_model("llama", vocab_size=len(old), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    old_rows = model.get_input_embeddings().weight.detach().clone()
    new_ids = mean_init_new_embeddings(model, old, new)

    dummy_prefix = old.convert_tokens_to_ids("▁")
    inner = [i for i in new_ids if not new.convert_ids_to_tokens(i).startswith("▁")]
    assert len(inner) > len(new_ids) // 2  # most Chinese pieces are word-internal
    assert "▁" in old.convert_ids_to_tokens(old.encode(new.decode([inner[0]]), add_special_tokens=False))
    rows = model.get_input_embeddings().weight.detach()
    for token_id in inner:
        sub_ids = old_sub_token_ids(old, new, token_id)
        assert dummy_prefix not in sub_ids
        assert bytes(int(t[3:5], 16) for t in old.convert_ids_to_tokens(sub_ids)).decode() == new.decode([token_id])
        torch.testing.assert_close(rows[token_id], old_rows[sub_ids].mean(dim=0))


def test_extension_refuses_a_tokenizer_that_moved_old_ids(tiny_qwen2, tmp_path):
    old = AutoTokenizer.from_pretrained(tiny_qwen2)
    moved = AutoTokenizer.from_pretrained(tiny_qwen2)
    moved.add_tokens(["北京大学"])
    check_old_ids_unchanged(old, moved)
    with pytest.raises(UserError, match="is not an extension of the old one: token"):
        check_old_ids_unchanged(moved, old)  # the reverse direction loses a token


def pretrain_after_extension(tiny_qwen2, merged_bpe, tmp_path, name: str, *flags: str) -> tuple[Path, Path]:
    """extend_embeddings.py on the tiny model with the merged tokenizer, then continue_pretraining.py
    on the shipped corpus with `flags`: (the extended model, the run's output directory)."""
    from transformers import TrainingArguments

    from llm_tuning.pretrain.blocks import PretrainArguments
    from llm_tuning.pretrain.shards import write_shards
    from llm_tuning.training import FinetuneArguments, ModelArguments, parse_args

    extended = tmp_path / "extended"
    load_script("extend_embeddings").main(load_script("extend_embeddings").parse_args(
        ["--base_model", str(tiny_qwen2), "--tokenizer", str(merged_bpe), "--output_dir", str(extended)]))
    write_shards(sorted(DATA.glob("*.jsonl")), tmp_path / "corpus", lines_per_shard=200, heldout_lines=20)
    out = tmp_path / name
    argv = ["--model_name_or_path", str(extended), "--corpus_dir", str(tmp_path / "corpus"), "--output_dir", str(out),
            "--block_size", "32", "--per_device_train_batch_size", "4", "--learning_rate", "5e-3",
            "--lora_dropout", "0",
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", *flags]
    load_script("continue_pretraining").main(
        *parse_args(ModelArguments, PretrainArguments, FinetuneArguments, TrainingArguments, argv=argv))
    return extended, out


def test_lora_after_extension_trains_and_saves_the_embeddings(tiny_qwen2, merged_bpe, tmp_path, capsys):
    _, out = pretrain_after_extension(tiny_qwen2, merged_bpe, tmp_path, "lora", "--max_steps", "20",
                                      "--eval_on_start", "true", "--eval_strategy", "steps", "--eval_steps", "20")

    assert "training embed_tokens, lm_head in full beside LoRA" in capsys.readouterr().out
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["modules_to_save"]) == ["embed_tokens", "lm_head"]
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any("embed_tokens" in k for k in keys) and any("lm_head" in k for k in keys)
    evals = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines() if "eval_loss" in line]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 1.0


def test_tied_embeddings_stay_tied_through_lora_training_save_and_merge(tiny_qwen2, merged_bpe, tmp_path):
    """Qwen2.5-0.5B, Llama-3.2 and Gemma tie lm_head to embed_tokens: after training the new
    tokens' rows beside LoRA, the saved and merged model's input and output rows must be equal."""
    from peft import PeftModel
    from transformers import TrainingArguments

    from llm_tuning.pretrain.blocks import PretrainArguments
    from llm_tuning.pretrain.shards import write_shards
    from llm_tuning.training import FinetuneArguments, ModelArguments, parse_args

    tied = tmp_path / "tied"
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(tied)
    reloaded = AutoModelForCausalLM.from_pretrained(tied)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    AutoTokenizer.from_pretrained(tiny_qwen2).save_pretrained(tied)
    extended = tmp_path / "extended"
    load_script("extend_embeddings").main(load_script("extend_embeddings").parse_args(
        ["--base_model", str(tied), "--tokenizer", str(merged_bpe), "--output_dir", str(extended)]))
    write_shards(sorted(DATA.glob("*.jsonl")), tmp_path / "corpus", lines_per_shard=200)
    out = tmp_path / "lora"
    argv = ["--model_name_or_path", str(extended), "--corpus_dir", str(tmp_path / "corpus"), "--output_dir", str(out),
            "--block_size", "32", "--per_device_train_batch_size", "4", "--max_steps", "5", "--learning_rate", "5e-3",
            "--lora_dropout", "0", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "true"]
    load_script("continue_pretraining").main(
        *parse_args(ModelArguments, PretrainArguments, FinetuneArguments, TrainingArguments, argv=argv))

    before = AutoModelForCausalLM.from_pretrained(extended).get_input_embeddings().weight.detach().clone()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(extended), out).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    for candidate in (merged, AutoModelForCausalLM.from_pretrained(tmp_path / "merged")):
        rows_in = candidate.get_input_embeddings().weight.detach()
        rows_out = candidate.get_output_embeddings().weight.detach()
        assert torch.equal(rows_in, rows_out)
        assert not torch.equal(rows_in, before)  # the embeddings were trained, as one matrix


def test_qlora_after_extension_trains_the_new_embedding_rows(tiny_qwen2, merged_bpe, tmp_path, capsys):
    extended, out = pretrain_after_extension(tiny_qwen2, merged_bpe, tmp_path, "qlora", "--max_steps", "4",
                                             "--finetuning_type", "qlora", "--quantization_bit", "4")
    assert "training embed_tokens, lm_head in full beside LoRA" in capsys.readouterr().out
    new_ids = list(range(len(AutoTokenizer.from_pretrained(tiny_qwen2)), len(AutoTokenizer.from_pretrained(extended))))
    with safe_open(extended / "model.safetensors", "pt") as f:
        before = f.get_tensor(next(k for k in f.keys() if "embed_tokens" in k))[new_ids]
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        after = f.get_tensor(next(k for k in f.keys() if "embed_tokens" in k))[new_ids].to(before.dtype)
    assert (after - before).abs().max() > 1e-4  # the rows the extension added were trained, not left as initialised
