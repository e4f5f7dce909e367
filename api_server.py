"""An OpenAI-compatible chat server for a base model plus adapter(s), or a merged model.

    # CPU or GPU, transformers backend (requests are queued and decoded in batches)
    API_KEY=sk-my-secret python api_server.py --adapter weights/simple_math_4op --port 8000

    # GPU, vLLM backend (pip install vllm): continuous batching, the LoRA adapter per request
    API_KEY=sk-my-secret python api_server.py --adapter weights/simple_math_4op --backend vllm

Then talk to it with any OpenAI client:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-my-secret")
    reply = client.chat.completions.create(
        model="simple_math_4op", messages=[{"role": "user", "content": "计算 3 + 94 等于多少？"}],
        temperature=0)
    print(reply.choices[0].message.content)

or curl:

    curl http://127.0.0.1:8000/v1/chat/completions -H "Authorization: Bearer sk-my-secret" \\
      -H "Content-Type: application/json" \\
      -d '{"model": "simple_math_4op", "messages": [{"role": "user", "content": "What is 75 + 54?"}], "stream": true}'

Tools and reasoning work as in OpenAI's API: `tools` and `tool_choice` in, `message.tool_calls`
(finish_reason "tool_calls") and `message.reasoning_content` out, also streamed; the client sends
calls back as assistant messages with `tool_calls` and results as `tool` messages. The tool-call
syntax is the model's own chat template's (llm_tuning/serve/openai_api.py says what each
tool_choice does). `"chat_template_kwargs": {"enable_thinking": true}` lets Qwen3 think per request.

The model name is the adapter's (or model's) directory name unless --model_name says otherwise.
Without the API key variable set, the server accepts every request (it says so at start-up);
it binds 127.0.0.1 unless --host 0.0.0.0 is given.

Under load it answers instead of stalling: a body over --max_request_bytes gets 413, a request
arriving when --max_queued_requests are already queued or decoding gets 429 with `Retry-After`,
and a conversation too long for the context is refused before it is tokenized. SIGTERM (or
Ctrl-C) drains: new requests get 503 while those in flight finish, for up to --shutdown_grace_s.
"""

import argparse
import os
from pathlib import Path

from llm_tuning.cli import ArgumentParser, UserError, exits_on_user_error
from llm_tuning.generation import context_length
from llm_tuning.inference import add_model_arguments, load_chat_model, load_chat_tokenizer, trust_remote_code_for
from llm_tuning.serve.engines import TransformersEngine, VllmEngine
from llm_tuning.serve.openai_api import DEFAULT_MAX_REQUEST_BYTES, Admission, DrainingServer, ServedModel, create_app


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model_name", default=None, help="the name clients pass as `model`")
    parser.add_argument("--api_key_env", default="API_KEY", help="environment variable holding the API key")
    parser.add_argument("--system", default=None, help="default system prompt (default: the template's)")
    parser.add_argument("--max_batch_size", type=int, default=16, help="transformers: choices decoded together")
    parser.add_argument("--default_max_tokens", type=int, default=512, help="reply budget when a request sets none")
    parser.add_argument("--max_model_len", type=int, default=None, help="context length (default: the model's)")
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.9, help="vllm only")
    parser.add_argument("--tensor_parallel_size", type=int, default=1, help="vllm only")
    parser.add_argument("--max_lora_rank", type=int, default=64, help="vllm only")
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="larger request bodies get 413")
    parser.add_argument("--max_queued_requests", type=int, default=64,
                        help="requests queued or decoding at once; more get 429 with Retry-After")
    parser.add_argument("--shutdown_grace_s", type=float, default=30.0,
                        help="on SIGTERM, how long requests in flight may take to finish")
    return parser.parse_args(argv)


def build_engine(args: argparse.Namespace):
    """(engine, ServedModel) for the chosen backend."""
    name = args.model_name or Path((args.adapter or [args.base])[0] or "model").resolve().name
    if args.backend == "vllm":
        if len(args.adapter) > 1:
            raise UserError("--backend vllm serves one adapter; merge or mix them first (merge_lora.py)")
        base, tokenizer, template = load_chat_tokenizer(args)
        engine = VllmEngine(base, args.adapter[0] if args.adapter else None, dtype=args.dtype,
                            trust_remote_code=trust_remote_code_for(args), max_model_len=args.max_model_len,
                            gpu_memory_utilization=args.gpu_memory_utilization,
                            tensor_parallel_size=args.tensor_parallel_size, max_lora_rank=args.max_lora_rank)
        length = engine.max_model_len
    else:
        model, tokenizer, template = load_chat_model(args)
        engine = TransformersEngine(model, tokenizer, max_batch_size=args.max_batch_size)
        length = args.max_model_len or context_length(model)
    served = ServedModel(name, tokenizer, template, length, args.default_max_tokens, args.system)
    return engine, served


@exits_on_user_error
def main(args: argparse.Namespace) -> None:
    api_key = os.environ.get(args.api_key_env) or None
    engine, served = build_engine(args)
    if api_key is None:
        print(f"warning: ${args.api_key_env} is not set, so the server accepts requests without a key")
    print(f"serving {served.name!r} ({engine.backend} backend) at http://{args.host}:{args.port}/v1")
    app = create_app(engine, served, api_key, max_request_bytes=args.max_request_bytes,
                     admission=Admission(args.max_queued_requests))
    DrainingServer(app, args.host, args.port, args.shutdown_grace_s).run()


if __name__ == "__main__":
    main(parse_args())
