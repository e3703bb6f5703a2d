#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora into fuzz/corpus/<target>/ from tests/fixtures.

Seeds are small (a few KiB each) so libFuzzer's input length stays small and runs stay fast;
each one is prefixed with the control bytes its target reads first (see the targets' docs).
Inputs in fuzz/regressions/<target>/ (ones the fuzzer failed on) are seeds too.
Run from anywhere: `python3 fuzz/seeds.py`. Existing corpus files are kept (libFuzzer adds
its finds there too); seeds are named by content, so reruns write nothing new.
"""

import gzip
import hashlib
import json
import pathlib
import struct
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = ROOT / "fuzz" / "corpus"
MAX_SEED = 6 * 1024

stream = (FIXTURES / "responses_stream.sse").read_bytes()
usage = (FIXTURES / "codex_wham_usage.json").read_bytes()

# The fixture's events, each with its blank line.
events = [e + b"\n\n" for e in stream.split(b"\n\n") if e.strip()]
datas = [
    line[len(b"data: "):]
    for e in events
    for line in e.split(b"\n")
    if line.startswith(b"data: ")
]


def window(lo, hi):
    """Events lo..hi as one stream, cut to MAX_SEED bytes."""
    return b"".join(events[lo:hi])[:MAX_SEED]


def shrink(obj):
    """A JSON value with long strings cut, so a seed stays small."""
    if isinstance(obj, str):
        return obj[:64]
    if isinstance(obj, list):
        return [shrink(v) for v in obj[:4]]
    if isinstance(obj, dict):
        return {k: shrink(v) for k, v in obj.items()}
    return obj


def terminal_event(kind):
    completed = json.loads(datas[-1]) if datas else {}
    completed = shrink(completed)
    completed["type"] = kind
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(completed).encode() + b"\n\n"


FAILED = (
    b'event: response.failed\ndata: {"type":"response.failed","response":{"status":"failed",'
    b'"error":{"code":"usage_limit_reached","message":"You have hit your usage limit. Try again '
    b'in 3 days 2 hours.","resets_at":1767312000}}}\n\n'
)
ERROR = (
    b'event: error\ndata: {"type":"error","status":429,"error":{"type":"rate_limit_exceeded",'
    b'"message":"Rate limit reached. Please try again in 11.054s."}}\n\n'
)
CRLF = window(0, 3).replace(b"\n", b"\r\n")
BOM = b"\xef\xbb\xbf" + window(2, 5)

streams = [
    window(0, 4),
    window(2, 40),
    window(len(events) - 6, len(events)),
    window(0, 2) + terminal_event("response.completed"),
    window(0, 3) + terminal_event("response.incomplete"),
    window(0, 2) + FAILED,
    window(0, 2) + ERROR,
    CRLF,
    BOM,
    b": keep-alive\n\nretry: 1500\nid: 7\ndata: a\ndata: b\r\rdata: [DONE]\n\n",
]

REQUESTS = [
    {
        "model": "gpt-5.5",
        "instructions": "You are Codex.",
        "input": [
            {"type": "message", "role": "system", "content": "be brief"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        ],
        "tools": [{"type": "function", "name": "shell", "parameters": {"type": "object"}}],
        "stream": True,
        "store": False,
        "max_output_tokens": 8192,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "text": {"verbosity": "low", "format": {"type": "text"}},
    },
    {"model": "gpt-5", "input": "hello", "temperature": 0.3, "top_p": 1, "user": "u",
     "metadata": {"a": "b"}, "previous_response_id": "resp_1", "service_tier": "flex"},
]
request_bytes = [json.dumps(r).encode() for r in REQUESTS] + [
    b'{ "model" : "m", "r\\u006fle":"x", "input":"[\\"not\\", \\"an array\\"]", "n":-1.5e3 }',
    b'{"a":1,"a":2,"stream":true}',
]
# Deeper than 64 levels (a tool schema can be): the scanners once stopped at 64.
deep = '"leaf"'
for level in range(90):
    deep = "[" + deep + "]" if level % 2 == 0 else '{"k":' + deep + "}"
request_bytes.append(('{"model":"m","tools":[{"parameters":' + deep + '}],"max_output_tokens":5}').encode())
small_datas = [json.dumps(shrink(json.loads(d))).encode() for d in datas[:3] + datas[-3:]]

ERROR_BODIES = [
    b'{"error":{"type":"usage_limit_reached","message":"The usage limit has been reached",'
    b'"plan_type":"plus","resets_at":1767312000,"resets_in_seconds":86400}}',
    b'{"error":{"message":"Rate limit reached for gpt-5 on tokens per min. Please try again in '
    b'11.054s.","type":"requests","code":"rate_limit_exceeded"}}',
    b'{"error":{"message":"You exceeded your current quota","type":"insufficient_quota",'
    b'"code":"insufficient_quota"}}',
    b'{"detail":"Unsupported parameter: temperature"}',
    b'{"error":{"message":"Previous response with id \'resp_1\' not found.",'
    b'"code":"previous_response_not_found","param":"previous_response_id"}}',
    b"<html><head><title>Just a moment...</title></head></html>",
    b"error code: 502",
    b'{"status":"failed","error":{"code":"server_error","message":"boom"}}',
    b"",
]

HEADER_SETS = [
    [(0, b"30"), (2, b"6m0s"), (3, b"1.5s"), (4, b"0")],
    [(0, b"Sun, 06 Nov 1994 08:49:47 GMT"), (1, b"250")],
    [(5, b"100"), (6, b"300"), (7, b"1767312000"), (8, b"100"), (9, b"10080"), (10, b"1767648600"),
     (11, b"false"), (12, b"False"), (13, b"0")],
    [(14, b"text/html; charset=utf-8"), (15, b'Bearer realm="api"')],
]


def headers_bytes(headers):
    out = bytes([len(headers)])
    for name, value in headers:
        out += bytes([name, len(value)]) + value
    return out


def write(target, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


for s in streams:
    # No chunking, then small uneven chunks, each with loose and tight bounds.
    write("sse_decoder", b"\x00" + b"\x00" + s)
    write("sse_decoder", b"\x04\x01\x07\x00\x40" + b"\x35" + s)
    write("fold", b"\x00\x00\x00" + s)
    write("fold", b"\x10\x01\x03\x01\x05\x80" + s)
    # A cap the stream passes, one near it and one far above; a tight budget.
    for control in (b"\x02\x00", b"\x14\x00", b"\xff\x00", b"\x08\x04"):
        write("cap", control + s)

def chunked(data, size, line=b"%x\r\n"):
    """`data` as a chunked body of `size`-byte chunks, each size line written by `line`."""
    out = b""
    for i in range(0, len(data), size):
        part = data[i:i + size]
        out += (line % len(part)) + part + b"\r\n"
    return out + b"0\r\n\r\n"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
for s in streams[:4]:
    s = s[:2048]
    # POST, no splits and three; chunks an event each and of 7 bytes; odd size lines.
    for control in (b"\x00\x00", b"\x00\x03\x20\x80\xe0", b"\x01\x02\x01\xfe"):
        write("rechunk", control + HEAD + b"".join(chunked(e, len(e))[:-5] for e in events[:20]) + b"0\r\n\r\n")
        write("rechunk", control + HEAD + chunked(s, 7))
        write("rechunk", control + HEAD + chunked(s, 300, b"%X;ext=1\r\n"))
    write("rechunk", b"\x00\x01\x80" + HEAD + chunked(s, 64)[:-2] + b"x-trailer: 1\r\n\r\n")
    write("rechunk", b"\x00\x01\x80" + b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(s) + s)
write("rechunk", b"\x02\x00" + HEAD)
write("rechunk", b"\x00\x00" + b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD + chunked(b"hello", 2))

for body in request_bytes + small_datas + [usage]:
    write("json_scan", b"\x00" + body)
    write("json_scan", b"\x03" + body)

for body in request_bytes:
    for policy in range(4):
        write("normalize_body", bytes([policy, 0x00, 0]) + body)
    write("normalize_body", bytes([3, 0x0b, 2, 0x10, 0x2d, 0x36, 0x00, 0xc1]) + body)

for status in (429, 400, 401, 403, 404, 500, 503, 200):
    for i, body in enumerate(ERROR_BODIES):
        headers = HEADER_SETS[i % len(HEADER_SETS)]
        write("classify", struct.pack("<H", status - 100) + headers_bytes(headers) + b"\x01" + body)
for d in small_datas:
    write("classify", struct.pack("<H", 100) + b"\x00\x00" + d)
write("classify", struct.pack("<H", 100) + b"\x00\x00" + FAILED.split(b"data: ")[1])

PHRASES = [b"6m0s", b"1h2m3.5s", b"20ms", b"Please try again in 11.054s.", b"retry after 2 days 3 hours",
           b"Sun, 06 Nov 1994 08:49:47 GMT", b"1.5", b"+0", b"\xc2\xb5s"]
for form in range(5):
    for i, phrase in enumerate(PHRASES):
        headers = HEADER_SETS[i % 3]
        tail = b"".join(bytes([name, len(value)]) + value for name, value in headers)
        write("hints", bytes([form]) + struct.pack("<I", 1000 * (i + 1)) + b"\x01" + bytes([len(phrase)]) + phrase + tail)

ENCODINGS = ["zstd", "gzip", "deflate", "br", "identity"]
for body in request_bytes[:2]:
    for code in range(9):
        # Round trips through every encoding and list, with a limit that fits and one that does not.
        write("decode", bytes([code]) + struct.pack("<H", 4096) + b"\x01" + body)
        write("decode", bytes([code]) + struct.pack("<H", 2) + b"\x01" + body)
    write("decode", bytes([1]) + struct.pack("<H", 4096) + b"\x00" + gzip.compress(body))
    write("decode", bytes([2]) + struct.pack("<H", 4096) + b"\x00" + zlib.compress(body))
    raw = zlib.compressobj(wbits=-15)
    write("decode", bytes([2]) + struct.pack("<H", 4096) + b"\x00" + raw.compress(body) + raw.flush())
# A small gzip bomb: 1 MiB of zeros in about a kilobyte.
write("decode", bytes([1]) + struct.pack("<H", 64) + b"\x00" + gzip.compress(bytes(1 << 20)))

# Inputs the fuzzer once failed on, kept as seeds so every run replays them first
# (fuzz/regressions/<target>/; e.g. decode's brotli stream whose state passed an allowance).
for d in sorted((ROOT / "fuzz" / "regressions").glob("*")):
    for f in sorted(d.iterdir()):
        write(d.name, f.read_bytes())

print("seeds in", CORPUS)
