"""Continued pretraining: causal-LM training on packed blocks streamed from a sharded, mixed corpus.

Adapts an English-first base to Chinese or to a domain (e.g. Qwen/Qwen2.5-7B, meta-llama/Llama-2-7b-hf,
or the output of extend_embeddings.py after a vocabulary merge). Tested with transformers 5.24,
peft 0.21, datasets 5.2, torch 2.13.

    # 1. shards: python pretrain/compress_data.py --inputs a.jsonl b.jsonl --output_dir data/tokenized_data/pretrain_corpus --heldout_lines 1000
    # 2. LoRA (plus embed_tokens/lm_head automatically after extend_embeddings.py), one GPU
    python pretrain/continue_pretraining.py --model_name_or_path Qwen/Qwen2.5-7B \
        --corpus_dir data/tokenized_data/pretrain_corpus --mixture_weights zh_medical=3 --block_size 1024 \
        --output_dir weights/pt_qwen --max_steps 2000 --per_device_train_batch_size 8 \
        --gradient_accumulation_steps 4 --learning_rate 2e-4 --lora_rank 64 --bf16 true \
        --logging_steps 10 --eval_strategy steps --eval_steps 200 --save_steps 200 \
        --save_total_limit 3 --report_to tensorboard

    # Full continued pretraining (every weight; needs ~16 bytes a parameter with Adam, so a 7B
    # model wants DeepSpeed ZeRO-3 over several GPUs)
    torchrun --nproc_per_node 8 pretrain/continue_pretraining.py ... --finetuning_type full --learning_rate 2e-5

    # Continue a stopped run: the stream picks up after the last block the checkpoint trained on
    python pretrain/continue_pretraining.py ... --resume_from_checkpoint true

Offline smoke test on a tiny random model (what tests/test_pretrain_training.py runs):
    python -m llm_tuning.testing --arch qwen2 --out models/tiny-qwen2
    python pretrain/compress_data.py --inputs pretrain/data/*.jsonl --output_dir data/tokenized_data/pretrain_corpus \
        --lines_per_shard 200 --heldout_lines 40
    python pretrain/continue_pretraining.py --model_name_or_path models/tiny-qwen2 \
        --corpus_dir data/tokenized_data/pretrain_corpus --output_dir weights/pt_tiny --max_steps 60 --block_size 64 \
        --per_device_train_batch_size 8 --learning_rate 5e-3 --lora_rank 16 --lora_dropout 0 \
        --eval_strategy steps --eval_steps 20 --logging_steps 10 --save_steps 30

The data: every source is an endless stream over its shards (datasets streaming, zstd jsonl);
sources are interleaved with the mixture probabilities (data_mixture.py prints them), seeded by
--seed; texts are tokenized, joined with EOS and cut into --block_size blocks (labels = ids, every
token is learned). The stream never ends, so --max_steps is required (epochs have no meaning).
Eval loss and perplexity (exp of the loss) are measured on the held-out shards.

Writes to --output_dir: the adapter (LoRA) or the model (full), the tokenizer, trainer_log.jsonl,
loss.png, tensorboard logs under runs/ (--report_to tensorboard), and checkpoint-N/ folders
(--save_steps, --save_total_limit) each with stream_state.json, which a resume reads.
"""

from transformers import TrainingArguments, set_seed

from llm_tuning.cli import UserError, exits_on_user_error
from llm_tuning.methods import check_method, prepare_trainable
from llm_tuning.pretrain.mixture import (
    format_table, mixture_probabilities, mixture_table, parse_weights, text_probabilities,
)
from llm_tuning.modeling import load_model, load_tokenizer
from llm_tuning.pretrain.blocks import (
    SOURCE_TOKENS_KEY, PretrainArguments, PretrainTrainer, ResumableStream, StreamStateCallback, block_stream, collate_blocks, heldout_blocks, mean_tokens_per_text, read_stream_state, realised_token_shares,
)
from llm_tuning.pretrain.shards import load_manifest
from llm_tuning.checkpoints import require_output_dir, resume_argument
from llm_tuning.run_logs import run_log_callbacks
from llm_tuning.training import FinetuneArguments, ModelArguments, parse_args
from llm_tuning.pretrain.vocab import embedding_module_names, read_vocab_extension

# Pretraining adapts every layer: LoRA on all linear layers, not only attention.
LORA_TARGETS = "all-linear"


def sampling_probabilities(pretrain_args: PretrainArguments, tokenizer, show: bool) -> dict[str, float]:
    """The probability of drawing the next text from each source, printed as a table. With
    --mixture_by tokens the weights and alpha apply to token counts (lines × measured tokens per
    text) and a source's texts are drawn less often the longer they are."""
    sizes = {name: stats["lines"] for name, stats in load_manifest(pretrain_args.corpus_dir)["sources"].items()}
    weights = parse_weights(pretrain_args.mixture_weights, list(sizes))
    if pretrain_args.mixture_by == "texts":
        probabilities = mixture_probabilities(sizes, weights, pretrain_args.alpha)
        if show:
            print(format_table(mixture_table(sizes, weights, probabilities)))
        return probabilities
    per_text = mean_tokens_per_text(pretrain_args.corpus_dir, tokenizer)
    tokens = {name: round(lines * per_text[name]) for name, lines in sizes.items()}
    token_shares = mixture_probabilities(tokens, weights, pretrain_args.alpha)
    probabilities = text_probabilities(token_shares, per_text)
    if show:
        print(format_table(mixture_table(tokens, weights, token_shares), unit="tokens"))
        print("texts drawn with probability " + ", ".join(f"{name} {p:.2%}" for name, p in probabilities.items()))
    return probabilities


def check_arguments(model_args: ModelArguments, pretrain_args: PretrainArguments,
                    training_args: TrainingArguments) -> None:
    require_output_dir(training_args)
    if training_args.max_steps <= 0:
        raise UserError("pass --max_steps: the corpus is streamed without end, so training stops after that many steps")
    if not model_args.model_name_or_path:
        raise UserError("pass --model_name_or_path, the base model to continue pretraining")
    if pretrain_args.mixture_by not in {"texts", "tokens"}:
        raise UserError(f"--mixture_by must be texts or tokens, got {pretrain_args.mixture_by!r}")
    if training_args.dataloader_num_workers:
        raise UserError("drop --dataloader_num_workers: the stream position a checkpoint records is read "
                        "in the main process, so the block stream cannot be split over workers")


def open_stream(pretrain_args: PretrainArguments, training_args: TrainingArguments, tokenizer,
                probabilities: dict[str, float]) -> tuple[ResumableStream, str | None]:
    """The endless block stream, positioned after the checkpoint's last block on resume."""
    stream = ResumableStream(block_stream(pretrain_args.corpus_dir, probabilities, tokenizer,
                                          pretrain_args.block_size, training_args.seed, pretrain_args.texts_per_batch))
    checkpoint = resume_argument(training_args)
    if checkpoint:
        stream.resume(read_stream_state(checkpoint))
        training_args.ignore_data_skip = True  # the stream already starts after the seen blocks
        print(f"resuming from {checkpoint}: the stream continues after block {stream.blocks_seen}")
    return stream, checkpoint


def load_heldout(pretrain_args: PretrainArguments, training_args: TrainingArguments, tokenizer):
    """The held-out blocks of every source, or None when there is no evaluation."""
    if training_args.eval_strategy == "no":
        return None
    heldout = heldout_blocks(pretrain_args.corpus_dir, tokenizer, pretrain_args.block_size, pretrain_args.max_eval_blocks)
    if training_args.process_index == 0:
        print("held-out blocks per source: " + ", ".join(f"{s} {n}" for s, n in heldout.counts().items()))
    return heldout


def build_model(model_args: ModelArguments, pretrain_args: PretrainArguments, finetune_args: FinetuneArguments,
                training_args: TrainingArguments, tokenizer, quantization_bit: int | None):
    """The base (RoPE-scaled if asked), then LoRA or full training; after a vocabulary extension the
    embeddings of the new tokens are trained whole beside LoRA (a low-rank update cannot learn them)."""
    base_model = model_args.model_name_or_path
    model = load_model(base_model, model_args.dtype, model_args.trust_remote_code, quantization_bit,
                       rope_scaling=model_args.rope_scaling, rope_factor=model_args.rope_factor)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:  # the tokenizer must not hold ids past the embedding matrix (extend it first)
        raise UserError(f"{base_model}'s tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding "
                        "rows; run pretrain/extend_embeddings.py first")
    modules_to_save = [m.strip() for m in (pretrain_args.modules_to_save or "").split(",") if m.strip()]
    if pretrain_args.modules_to_save is None and read_vocab_extension(base_model):
        modules_to_save = embedding_module_names(model)
        print(f"the vocabulary was extended: training {', '.join(modules_to_save)} in full beside LoRA")
    model = prepare_trainable(model, finetune_args, LORA_TARGETS, gradient_checkpointing=training_args.gradient_checkpointing,
                              modules_to_save=modules_to_save)
    if training_args.process_index == 0 and hasattr(model, "print_trainable_parameters"):
        model.print_trainable_parameters()
    return model


def report(trainer: PretrainTrainer, stream: ResumableStream, probabilities: dict[str, float], heldout,
           blocks_per_step: int) -> None:
    """The realised token shares and the held-out perplexity, overall and per source."""
    if trainer.is_world_process_zero():  # the process that reads the stream
        trained = stream.state_after(trainer.state.global_step * blocks_per_step)[SOURCE_TOKENS_KEY]
        shares = realised_token_shares(list(probabilities), trained)
        print(f"token shares of the {sum(trained):,} tokens trained on: "
              + ", ".join(f"{name} {share:.2%}" for name, share in shares.items()))
    if heldout is not None:
        metrics = trainer.evaluate()
        if trainer.is_world_process_zero():
            print(f"held-out loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.2f} ("
                  + ", ".join(f"{s} {metrics[f'eval_perplexity_{s}']:.2f}" for s in heldout.sources) + ")")


@exits_on_user_error
def main(model_args: ModelArguments, pretrain_args: PretrainArguments, finetune_args: FinetuneArguments,
         training_args: TrainingArguments) -> None:
    check_arguments(model_args, pretrain_args, training_args)
    quantization_bit = check_method(finetune_args, model_args.quantization_bit)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.trust_remote_code)

    # Mixture: sampling probability per source, from the manifest's line counts (or token counts).
    probabilities = sampling_probabilities(pretrain_args, tokenizer, show=training_args.process_index == 0)
    # Data: the endless block stream (resumed where the checkpoint stopped) and the held-out blocks.
    stream, checkpoint = open_stream(pretrain_args, training_args, tokenizer, probabilities)
    heldout = load_heldout(pretrain_args, training_args, tokenizer)
    # Model: LoRA (plus new embedding rows) or every weight.
    model = build_model(model_args, pretrain_args, finetune_args, training_args, tokenizer, quantization_bit)

    blocks_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * training_args.world_size)
    trainer = PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=stream,
        eval_dataset=heldout.blocks if heldout else None,
        heldout_sources=heldout.sources if heldout else None,
        data_collator=collate_blocks,
        processing_class=tokenizer,
        callbacks=[*run_log_callbacks(), StreamStateCallback(stream, blocks_per_step)],
    )
    trainer.train(resume_from_checkpoint=checkpoint)

    # Save the adapter or model (safetensors) and the tokenizer, then report.
    trainer.save_model(training_args.output_dir)
    report(trainer, stream, probabilities, heldout, blocks_per_step)
    if trainer.is_world_process_zero():
        print(f"saved to {training_args.output_dir}")


if __name__ == "__main__":
    main(*parse_args(ModelArguments, PretrainArguments, FinetuneArguments, TrainingArguments))
