"""Print llm_tuning.info's parameter counts and training-memory estimates for real checkpoint shapes.

    python bench/info_real_shapes.py

The configs are written offline from the published shapes (no download); only the meta device is used.
"""

import tempfile
from argparse import Namespace
from pathlib import Path

from transformers import AutoConfig

from llm_tuning.info import report

SHAPES = {
    "Qwen2.5-7B-Instruct": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                          num_attention_heads=28, num_key_value_heads=4, vocab_size=152064)),
    "Llama-2-7b-chat": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)),
}

for name, (model_type, shape) in SHAPES.items():
    with tempfile.TemporaryDirectory() as tmp:
        AutoConfig.for_model(model_type, **shape).save_pretrained(tmp)
        args = Namespace(model=str(Path(tmp)), adapter=None, batch_size=4, seq_len=512, gradient_checkpointing=True,
                         lora_rank=8, lora_target="all-linear", num_virtual_tokens=16, freeze_layers=2,
                         trust_remote_code=False)
        print(f"== {name}\n" + report(args).replace(tmp, name) + "\n")
