"""`crab-rt serve`: many live streams over one WebSocket server, one shared `Pipeline`.

- `protocol`: the wire protocol (docs/protocol.md) and its JSON Schemas (`schemas/`).
- `server`: the asyncio server (`Server`, `ServerConfig`, `serve_in_background`).
- `metrics`: its Prometheus metrics.

Needs the `serve` extra (`websockets`, `prometheus-client`); the rest of the runtime never imports this package.
"""
