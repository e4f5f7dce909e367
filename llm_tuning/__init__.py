"""LLM-Tuning: the small library under the per-family fine-tuning recipes.

Each module has one job; recipes import what they need:
templates (chat formats), data (read, validate, tokenize, save, collate), modeling (load models,
LoRA targets, adapters), training (arguments, Trainer wiring, callbacks), generation (chat),
testing (tiny offline models and tokenizers), cli (user errors and exit codes).
"""

__version__ = "0.1.0"
