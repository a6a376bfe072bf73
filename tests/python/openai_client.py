"""Drives an Agora node through the official `openai` Python package.

Usage: python openai_client.py BASE_URL MODEL
Exits non-zero (with the failing assertion) if anything is off.
"""
import sys

import openai
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0, timeout=120)

# models
ids = [m.id for m in client.models.list().data]
assert model in ids, ids

# chat, non-streaming
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello in three words."}],
    max_tokens=16,
    temperature=0,
)
text = r.choices[0].message.content
assert r.choices[0].message.role == "assistant"
assert text and text.strip(), r
assert r.usage.completion_tokens <= 16 and r.usage.prompt_tokens > 0, r.usage
assert r.choices[0].finish_reason in ("stop", "length")

# chat, streaming: same text as non-streaming under greedy decoding
chunks = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello in three words."}],
    max_tokens=16,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
streamed, usage, finish = "", None, None
for c in chunks:
    if c.usage:
        usage = c.usage
    for ch in c.choices:
        streamed += ch.delta.content or ""
        finish = ch.finish_reason or finish
assert streamed == text, (streamed, text)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
assert finish == r.choices[0].finish_reason

# seeded sampling reproduces
kw = dict(model=model, messages=[{"role": "user", "content": "Invent a word."}], max_tokens=12, temperature=0.9, seed=77)
a = client.chat.completions.create(**kw).choices[0].message.content
b = client.chat.completions.create(**kw).choices[0].message.content
assert a == b, (a, b)

# legacy completions with a stop sequence
c = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[","])
assert "," not in c.choices[0].text and c.choices[0].finish_reason == "stop", c

# errors map to the SDK's exception types
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404 and "no-such-model" in str(e), e
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=10**6)
    raise AssertionError("max_tokens beyond the context accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "context length" in str(e), e

print("openai client: all checks passed")
