"""Eval during training: every N steps, generate answers and/or pick choice letters, and log the scores.

Enabled from any recipe with the DataArguments flags
    --generation_eval_file data/eval/qa_eval.jsonl   # rouge-1/2/l, bleu-4, exact match
    --choice_eval_file data/eval/choice_eval.jsonl   # choice accuracy by option likelihood
    --generation_eval_steps 50                       # how often (and once more at the end)
The scores go through `Trainer.log`, so they land where the loss goes: tensorboard, trainer_log.jsonl,
the trainer state, and `loss.png` (as extra panels). They are the numbers eval.py prints for the
same files (same functions, greedy decoding).
"""

from __future__ import annotations

from transformers import TrainerCallback

from .evaluation import evaluate_choices, evaluate_generation, load_choice_questions, load_eval_conversations
from .generation import GenerationSettings
from .templates import Template


class GenerationEvalCallback(TrainerCallback):
    """Runs generation / choice eval on the main process every `every_steps` optimizer steps."""

    def __init__(self, trainer, tokenizer, template: Template, every_steps: int, conversations=(), questions=(),
                 max_new_tokens: int = 64):
        self.trainer, self.tokenizer, self.template = trainer, tokenizer, template
        self.every_steps = every_steps
        self.conversations, self.questions = list(conversations), list(questions)
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens)
        self.last_step = -1

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0:
            # Trainer.log clears control.should_log, which would swallow this step's loss log.
            should_log = control.should_log
            self._evaluate(model, state)
            control.should_log = should_log

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != self.last_step:
            self._evaluate(model, state)

    def _evaluate(self, model, state) -> None:
        self.last_step = state.global_step
        if not state.is_world_process_zero:
            return
        was_training = model.training
        model.eval()
        metrics = {}
        if self.conversations:
            scores, _ = evaluate_generation(model, self.tokenizer, self.template, self.conversations,
                                            self.settings, progress=False)
            metrics.update({f"eval_{name}": value for name, value in scores.items()})
        if self.questions:
            scores, _ = evaluate_choices(model, self.tokenizer, self.template, self.questions)
            metrics.update({f"eval_{name}": value for name, value in scores.items()})
        model.train(was_training)
        self.trainer.log(metrics)


def attach_generation_eval(trainer, data_args, tokenizer, template: Template) -> GenerationEvalCallback | None:
    """Add the callback when --generation_eval_file or --choice_eval_file is given (files are checked now,
    before training starts, so a bad eval file never costs a training run)."""
    generation_file = getattr(data_args, "generation_eval_file", None)
    choice_file = getattr(data_args, "choice_eval_file", None)
    if not generation_file and not choice_file:
        return None
    callback = GenerationEvalCallback(
        trainer, tokenizer, template, data_args.generation_eval_steps,
        conversations=load_eval_conversations(generation_file) if generation_file else (),
        questions=load_choice_questions(choice_file) if choice_file else (),
        max_new_tokens=data_args.generation_eval_max_new_tokens,
    )
    trainer.add_callback(callback)
    return callback
