"""Drives the official OpenAI Python SDK through the proxy (tests/e2e_sdk.rs).

usage: sdk_client.py BASE_URL MODEL

Prints one JSON object per line and step: {"step", "id", "text"} on success, or
{"step", "error", "status", "message"} when the SDK raised. Steps: a streaming
create, a non-streaming create, and a follow-up anchored on the non-streaming answer with
previous_response_id. A failed step does not stop the next one.
"""

import json
import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
# The key is the client's; the proxy replaces it with one of its own credentials.
client = openai.OpenAI(base_url=base_url, api_key="sk-client-python", max_retries=0, timeout=60)


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def attempt(step, fn):
    try:
        rid, text = fn()
        emit(step, id=rid, text=text)
        return rid
    except openai.APIError as e:
        emit(step, error=type(e).__name__, status=getattr(e, "status_code", None), message=str(e))
        return None


def nonstream():
    r = client.responses.create(model=model, input="e2e nonstream python", store=True)
    return r.id, r.output_text


def stream():
    text, rid = [], None
    with client.responses.create(model=model, input="e2e stream python", stream=True) as events:
        for ev in events:
            if ev.type == "response.output_text.delta":
                text.append(ev.delta)
            elif ev.type == "response.completed":
                rid = ev.response.id
    return rid, "".join(text)


attempt("stream", stream)
first = attempt("nonstream", nonstream)


def followup():
    r = client.responses.create(
        model=model, input="e2e follow-up python", previous_response_id=first, store=True
    )
    return r.id, r.output_text


if first is not None:
    attempt("followup", followup)
