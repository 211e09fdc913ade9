"""The Python client of the `crab-rt serve` WebSocket protocol, versions 1 and 1.1 (docs/protocol.md): async and
blocking.

- `messages`: the typed messages the server sends (`Ready`, `SpeechStart`, `SpeechEnd`, `Event` (=
  `EmotionEvent`), `ServerError`, `Done`), their parser, and PCM encoding and splitting.
- `connection`: `AsyncClient`, `Client` and `stream_file` / `iter_file`.

The `websockets` library is an optional extra (`crab-rt[serve]`), imported when a client opens.
"""

from crab_rt.client.connection import AsyncClient, Client, iter_file, stream_file
from crab_rt.client.messages import (
    ClientError,
    Done,
    Event,
    Message,
    Ready,
    ServerError,
    SpeechEnd,
    SpeechStart,
    encode_pcm,
    parse_message,
    split_payload,
)

__all__ = [
    "AsyncClient", "Client", "ClientError", "Message", "Ready", "SpeechStart", "SpeechEnd", "Event", "ServerError",
    "Done", "encode_pcm", "split_payload", "parse_message", "iter_file", "stream_file",
]
