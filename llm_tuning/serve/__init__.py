"""Serving a model over HTTP (the library under api_server.py).

engines     the transformers engine (continuous batching of requests) and the vLLM engine
openai_api  the OpenAI-compatible chat-completions API (FastAPI) over an engine
"""
