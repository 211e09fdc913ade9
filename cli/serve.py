"""`crab-rt serve`: many live streams over a WebSocket (docs/protocol.md), with /healthz and /metrics."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from crab_rt.cli._io import read_token_file
from crab_rt.cli._options import add_config_option, config_from_args
from crab_rt.cli._pipeline_options import add_pipeline_options, pipeline_config_from_args
from crab_rt.serve.server import ServerConfig

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve", parents=[common],
        help="serve many live streams over a WebSocket (protocol: docs/protocol.md)",
        description="One WebSocket connection is one audio stream; every stream shares one pipeline, whose "
        "speech encoder, ASR and head batch utterances across streams. A browser page at / (open "
        "http://127.0.0.1:8765/), GET /healthz and /metrics (Prometheus) on the same port. "
        "SIGTERM or Ctrl-C drains: utterances in flight are finished and sent, every client "
        "gets `done`. Clients: `crab-rt client`, crab_rt.client, or any WebSocket library.",
    )
    n = p.add_argument_group("network")
    add_config_option(n, "--host", ServerConfig, "host", "address to listen on (0.0.0.0: every interface)")
    add_config_option(n, "--port", ServerConfig, "port", "TCP port (0: any free port, printed at start)")
    n.add_argument("--token-file", help="file holding a bearer token that clients must send "
                   "(Authorization: Bearer <token>); default: no authentication")
    add_config_option(n, "--tls-cert", ServerConfig, "tls_cert", "PEM certificate: serve wss:// (with --tls-key)",
                      type=str)
    add_config_option(n, "--tls-key", ServerConfig, "tls_key", "PEM private key of --tls-cert", type=str)
    n.add_argument("--no-ui", action="store_true", help="do not serve the browser page at / (live microphone or "
                   "file, a timeline of the events); WebSocket clients, /healthz and /metrics are unchanged")
    lim = p.add_argument_group("limits")
    add_config_option(lim, "--max-streams", ServerConfig, "max_streams",
                      "open streams; one more is refused at once with HTTP 503")
    add_config_option(lim, "--max-message-bytes", ServerConfig, "max_message_bytes",
                      "largest WebSocket message; a larger one closes its connection (1009)")
    add_config_option(lim, "--max-connections", ServerConfig, "max_connections",
                      "open connections, streams and those not yet started; one more is closed at TCP accept")
    add_config_option(lim, "--handshake-timeout-s", ServerConfig, "handshake_timeout_s",
                      "a connection must finish its WebSocket (and TLS) handshake within this (not under --ray)")
    add_config_option(lim, "--start-timeout-s", ServerConfig, "start_timeout_s",
                      "a connection must send start within this; until then it holds no stream slot")
    add_config_option(lim, "--idle-timeout-s", ServerConfig, "idle_timeout_s",
                      "a stream without a message for this long ends")
    add_config_option(lim, "--realtime-slack-s", ServerConfig, "realtime_slack_s",
                      "how far a realtime client may run ahead of the clock before it is paced")
    add_config_option(lim, "--max-buffered-audio-s", ServerConfig, "max_buffered_audio_s",
                      "with --ray: audio a client may have sent beyond what its stream has read (Serve's proxy "
                      "cannot push back through TCP); beyond, the stream ends with a protocol error")
    add_config_option(lim, "--max-pending-messages", ServerConfig, "max_pending_messages",
                      "outgoing messages queued per connection; beyond, they are dropped and reported")
    add_config_option(lim, "--drain-timeout-s", ServerConfig, "drain_timeout_s",
                      "on SIGTERM, how long to wait for streams to finish")
    r = p.add_argument_group("Ray Serve (scale-out over many machines; docs/ray.md)")
    r.add_argument("--ray", action="store_true", help="run as a Ray Serve application with the same protocol: an "
                   "ingress (connections, VAD) and model and ASR replicas that batch across streams; needs the "
                   "ray extra")
    r.add_argument("--ray-config", metavar="FILE", help="YAML file: replicas or autoscaling bounds, CPUs/GPUs per "
                   "replica (fractional), batching, Ray address (docs/ray.md); default: one replica of each, "
                   "0.5 CPU each, on a local Ray instance")
    r.add_argument("--write-config", metavar="FILE", help="with --ray: write a Serve config for `serve deploy` "
                   "(or a KubeRay RayService) to FILE and exit")
    add_pipeline_options(p, overflow_default="block: the client is paced, nothing is lost", provisional_flag=False)
    p.set_defaults(func=run)


def server_config_from_args(args: argparse.Namespace) -> ServerConfig:
    config = config_from_args(ServerConfig, args)
    if args.token_file is not None:
        config = dataclasses.replace(config, token=read_token_file(args.token_file))
    if args.no_ui:
        config = dataclasses.replace(config, ui=False)
    return config.validate()


def run(args: argparse.Namespace) -> int:
    import sys

    from crab_rt.bundle import load_bundle
    from crab_rt.errors import ConfigError

    config = server_config_from_args(args)
    if (args.ray_config or args.write_config) and not args.ray:
        raise ConfigError("--ray-config and --write-config go with --ray")
    bundle = load_bundle(args.bundle)
    pipeline_config = pipeline_config_from_args(args, bundle.asr_model, live=False)
    if args.ray:  # the Ray Serve application (crab_rt.serve.ray), or with --write-config only its Serve config
        from crab_rt.serve import ray as ray_app

        ray_config = ray_app.load_ray_config(args.ray_config) if args.ray_config else ray_app.RayConfig()
        if args.write_config:
            ray_app.write_serve_config(args.write_config, bundle.root, pipeline_config, config, ray_config,
                                       token_file=args.token_file)
            if args.verbosity >= 0:
                print(f"crab-rt: wrote the Serve config {args.write_config}; on a Ray cluster: serve deploy "
                      f"{args.write_config} (docs/ray.md)", file=sys.stderr)
            return 0
        ray_app.run(bundle.root, pipeline_config, config, ray_config, handle_signals=True)
    else:
        _run_local(bundle, pipeline_config, config)
    if args.verbosity >= 0:
        print("crab-rt: server stopped", file=sys.stderr)
    return 0


def _run_local(bundle, pipeline_config, config: ServerConfig) -> None:
    """The WebSocket server in this process, until SIGTERM/SIGINT have drained it."""
    import asyncio
    import signal
    import threading

    from crab_rt.serve.server import Server

    server = Server(bundle, pipeline_config, config)

    async def main() -> None:
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, server.request_drain)
        await server.serve()

    asyncio.run(main())
