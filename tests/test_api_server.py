"""The OpenAI-compatible server, driven by the official `openai` client against a trained tiny adapter."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import time

import httpx
import openai
import pytest
import uvicorn

import api_server
import prefork
from llm_tuning.serve.openai_api import create_app
from llm_tuning.templates import encode_prompt
from tests.inference_fixtures import REPO_ROOT, train_tiny_adapter, training_pairs

API_KEY = "sk-test-key"
MODEL = "tiny-math"
PAIRS = training_pairs()


def free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def adapter(tiny_qwen2, tmp_path_factory):
    return train_tiny_adapter(tiny_qwen2, tmp_path_factory.mktemp("adapter"), PAIRS)


@contextlib.contextmanager
def running_server(argv: list[str], api_key: str | None):
    """(base_url, engine, served): api_server.py's app for `argv` in a uvicorn thread on a free port."""
    engine, served = api_server.build_engine(api_server.parse_args(argv))
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, served, api_key), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", engine, served
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()


@pytest.fixture(scope="module")
def server(adapter):
    """(base_url, engine, served), stopped after the module."""
    with running_server(["--adapter", str(adapter), "--model_name", MODEL, "--max_model_len", "256"], API_KEY) as up:
        yield up


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key=API_KEY, max_retries=0)


def ask(client, question: str, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, **kwargs)


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == [MODEL]


def test_sync_reply_is_the_trained_answer_with_exact_usage(client, server):
    _, _, served = server
    question, answer = PAIRS[0]
    reply = ask(client, question)
    assert reply.choices[0].message.content == answer
    assert reply.choices[0].finish_reason == "stop"
    # prompt: the template's prompt ids; completion: the answer's tokens plus the stop token
    assert reply.usage.prompt_tokens == len(encode_prompt(served.tokenizer, served.template, question))
    assert reply.usage.completion_tokens == len(served.tokenizer.encode(answer + "<|im_end|>"))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_pieces_join_to_the_answer(client):
    question, answer = PAIRS[2]
    stream = ask(client, question, stream=True, stream_options={"include_usage": True})
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == answer
    assert sum(1 for p in pieces if p) > 1, "the reply came in one piece: not streamed"
    assert reasons[-1] == "stop"
    assert usage.completion_tokens == ask(client, question).usage.completion_tokens


def test_sixteen_concurrent_async_requests_all_answered_and_batched(server):
    base_url, engine, _ = server
    questions = [PAIRS[i % len(PAIRS)] for i in range(16)]
    engine.batch_sizes.clear()

    async def main():
        async with openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0) as aclient:
            return await asyncio.gather(*[
                aclient.chat.completions.create(model=MODEL, temperature=0,
                                                messages=[{"role": "user", "content": q}])
                for q, _ in questions])

    replies = asyncio.run(main())
    assert [r.choices[0].message.content for r in replies] == [a for _, a in questions]
    assert max(engine.batch_sizes) > 1, f"requests were decoded one at a time: {engine.batch_sizes}"


def test_stop_strings_stop_token_ids_and_max_tokens(client, server):
    _, _, served = server
    question, answer = PAIRS[0]  # "3 + 94 = 97"
    stopped = ask(client, question, stop=["="]).choices[0]
    assert (stopped.message.content, stopped.finish_reason) == (answer.split("=")[0], "stop")
    first_token = served.tokenizer.encode(answer)[0]
    by_id = ask(client, question, extra_body={"stop_token_ids": [first_token]}).choices[0]
    assert (by_id.message.content, by_id.finish_reason) == ("", "stop")
    cut = ask(client, question, max_tokens=2)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 2
    assert cut.choices[0].message.content == served.tokenizer.decode(served.tokenizer.encode(answer)[:2])


def test_n_choices_with_a_seed_are_reproducible(client):
    question = PAIRS[1][0]

    def sample():
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], n=3, temperature=1.5,
            seed=7, max_tokens=8, frequency_penalty=0.5, presence_penalty=0.5)
        return [choice.message.content for choice in reply.choices]

    first = sample()
    assert len(first) == 3
    assert sample() == first
    assert len(set(first)) > 1, "three sampled choices with different seeds came out identical"


def test_multi_turn_messages_and_system_prompt_are_accepted(client):
    question, answer = PAIRS[3]
    reply = client.chat.completions.create(model=MODEL, temperature=0, messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": PAIRS[0][0]}, {"role": "assistant", "content": PAIRS[0][1]},
        {"role": "user", "content": question}])
    assert reply.choices[0].finish_reason in {"stop", "length"}
    assert reply.usage.prompt_tokens > len(question)


@pytest.mark.parametrize("kwargs, param", [
    ({"messages": []}, "messages"),
    ({"temperature": 5}, "temperature"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
    ({"max_tokens": 10_000}, "messages"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_bad_requests_get_400_with_openai_error_shape(client, kwargs, param):
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**request)
    assert err.value.status_code == 400
    assert err.value.body["type"] == "invalid_request_error"
    assert err.value.body["param"].startswith(param)
    assert err.value.body["message"]


def test_unknown_model_is_404_and_malformed_json_is_400(client, server):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found"
    raw = httpx.post(f"{server[0]}/chat/completions", content=b"{not json",
                     headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert raw.status_code == 400
    assert raw.json()["error"]["type"] == "invalid_request_error"


def test_wrong_or_missing_key_is_401(server):
    bad = openai.OpenAI(base_url=server[0], api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401
    assert err.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{server[0]}/models").status_code == 401


def test_vllm_backend_says_what_it_needs(adapter, capsys):
    with pytest.raises(SystemExit) as exit_info:
        api_server.main(api_server.parse_args(["--adapter", str(adapter), "--backend", "vllm"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "vLLM" in err and "--backend transformers" in err


def test_the_script_serves_as_a_user_starts_it(adapter):
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "API_KEY": API_KEY, "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([prefork.python(), "api_server.py", "--adapter", str(adapter), "--port", str(port)],
                               cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0)
        question, answer = PAIRS[4]
        reply = client.chat.completions.create(model=adapter.name, temperature=0,
                                               messages=[{"role": "user", "content": question}])
        assert reply.choices[0].message.content == answer
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_engine_batches_the_oldest_request_with_those_nearest_its_length():
    from types import SimpleNamespace

    from llm_tuning.serve.engines import pick_batch

    def job(prompt_length, choices=1):
        return SimpleNamespace(prompt_ids=[0] * prompt_length, settings=[None] * choices)

    pending = [job(50), job(10), job(48), job(12), job(55, choices=2), job(49)]
    lengths = lambda jobs: [len(j.prompt_ids) for j in jobs]  # noqa: E731
    # The oldest first, then the nearest lengths; the 2-choice job no longer fits, a short one does.
    assert lengths(pick_batch(pending, max_rows=4)) == [50, 49, 48, 12]
    assert lengths(pending) == [10, 55]  # the rest wait, oldest first
    assert lengths(pick_batch(pending, max_rows=4)) == [10, 55] and pending == []
