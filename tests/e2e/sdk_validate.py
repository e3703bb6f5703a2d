"""Validates what the proxy writes itself with the Python SDK's own types (tests/e2e_sdk.rs).

usage: sdk_validate.py BASE_URL MODEL

Prints one JSON object per line and step: {"step", "id", "text"} when every object of the step
validated, or {"step", "error", "message"} when the SDK raised or a validation failed. Steps:
- capped: a stream cut at max_output_tokens; every event validates as a ResponseStreamEvent,
  the final response.incomplete's response as a Response with usage and
  incomplete_details.reason = max_output_tokens;
- compact_v2: a local v2 compaction stream (the last input item is a compaction_trigger);
  every event validates, and the completed Response holds one compaction item;
- compact_v1: a local v1 compaction answer (responses.compact) validates as a
  CompactedResponse.
A failed step does not stop the next one.
"""

import json
import sys

import openai
import pydantic
from openai.types.responses import (
    CompactedResponse,
    Response,
    ResponseCompactionItem,
    ResponseStreamEvent,
)

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="sk-client-python", max_retries=0, timeout=60)
stream_event = pydantic.TypeAdapter(ResponseStreamEvent)


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def attempt(step, fn):
    try:
        rid, text = fn()
        emit(step, id=rid, text=text)
    except (openai.APIError, pydantic.ValidationError, AssertionError) as e:
        emit(step, error=type(e).__name__, message=str(e))


def validated_events(events):
    """Every event as the SDK's strict types read it: only what was on the wire counts."""
    out = []
    for ev in events:
        out.append(stream_event.validate_python(ev.to_dict()))
    return out


def capped():
    with client.responses.create(
        model=model, input="e2e capped python", max_output_tokens=3, stream=True
    ) as events:
        evs = validated_events(events)
    last = evs[-1]
    assert last.type == "response.incomplete", f"last event {last.type}"
    r = Response.model_validate(last.response.to_dict())
    assert r.status == "incomplete", r.status
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None, "no usage"
    assert r.usage.output_tokens > 0, r.usage
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens, r.usage
    return r.id, f"incomplete max_output_tokens output_tokens={r.usage.output_tokens}"


HISTORY = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the tokenizer"}]},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two tests fail."}]},
]


def compact_v2():
    with client.responses.create(
        model=model,
        input=HISTORY + [{"type": "compaction_trigger"}],
        stream=True,
        store=False,
    ) as events:
        evs = validated_events(events)
    for ev in evs:
        if hasattr(ev, "response"):
            Response.model_validate(ev.response.to_dict())
    last = evs[-1]
    assert last.type == "response.completed", f"last event {last.type}"
    r = Response.model_validate(last.response.to_dict())
    items = [ResponseCompactionItem.model_validate(i.to_dict()) for i in r.output]
    assert len(items) == 1, f"{len(items)} compaction items"
    done = [ev for ev in evs if ev.type == "response.output_item.done"]
    assert len(done) == 1 and done[0].item.type == "compaction", "exactly one compaction item"
    assert r.usage is not None, "no usage"
    return r.id, f"completed compaction id={str(bool(items[0].id)).lower()}"


def compact_v1():
    raw = client.responses.with_raw_response.compact(model=model, input=HISTORY)
    body = json.loads(raw.text)
    # The kept user messages are the client's own input items, passed back as the API does
    # (PROTOCOL.md §5); the SDK's output union has no user-message type, so the proxy's own
    # items are validated: the compaction item and the envelope around it.
    own = [i for i in body["output"] if i.get("type") != "message"]
    c = CompactedResponse.model_validate({**body, "output": own})
    assert c.object == "response.compaction", c.object
    assert len(c.output) == 1 and c.output[0].type == "compaction", c.output
    ResponseCompactionItem.model_validate(own[0])
    assert c.usage.total_tokens == c.usage.input_tokens + c.usage.output_tokens, c.usage
    return c.id, f"compaction id={str(bool(c.output[0].id)).lower()}"


attempt("capped", capped)
attempt("compact_v2", compact_v2)
attempt("compact_v1", compact_v1)
