"""Drives switchyard's TLS listener with the official OpenAI Python SDK.

Run by tests/openai.rs with BASE_URL, API_KEY, CA_FILE and MODEL in the environment.
Exits non-zero (with the failed assertion) when the gateway misbehaves.
"""

import os
import ssl
import sys

import openai

base_url = os.environ["BASE_URL"]
ca_file = os.environ["CA_FILE"]
model = os.environ["MODEL"]


def client(key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url,
        api_key=key,
        # The SDK's own HTTP client, trusting the test CA only.
        http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca_file)),
        max_retries=0,
    )


good = client(os.environ["API_KEY"])

models = [m.id for m in good.models.list()]
assert model in models, models

reply = good.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
assert reply.choices[0].message.content.startswith("hello from"), reply
assert reply.usage.prompt_tokens == 11 and reply.usage.completion_tokens == 7, reply.usage

stream = good.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "hi"}],
    stream=True,
    stream_options={"include_usage": True},
)
text = ""
usage = None
for chunk in stream:
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert text.startswith("hello from"), text
assert usage is not None and usage.completion_tokens == 7, usage

try:
    client("sk-wrong-key-wrong-key").models.list()
    sys.exit("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401

try:
    good.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    sys.exit("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
    assert e.code == "model_not_found", e.body

print("openai sdk: all checks passed")
