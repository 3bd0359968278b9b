"""`python -m serving.server`: run the model server until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from serving.server.app import JsonLogFormatter, ModelServer, ServerOptions, build_parser

    args = build_parser().parse_args(argv)
    if args.version:
        import tensorflow as tf

        from serving import __version__

        print(f"TensorFlow ModelServer: {__version__}-local\nTensorFlow Library: {tf.__version__}")
        return 0
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger("serving")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    log = logging.getLogger("serving.server")
    # Until the ports are open nothing is served or published: a stop signal during the initial
    # loads (which retry failed versions for minutes) ends the process at once, as it ends TF Serving.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _: os._exit(128 + number))
    try:
        options = ServerOptions.from_args(args)
        server = ModelServer(options)
        server.start()
    except (ValueError, OSError) as err:
        log.error("cannot start: %s", err, extra={"event": "start_failed", "error": str(err)})
        return 2
    except Exception as err:  # noqa: BLE001  (e.g. a refused initial config)
        log.error("cannot start: %s", err, extra={"event": "start_failed", "error": str(err)})
        return 1
    # Threads hand the GIL over every 1 ms instead of 5 ms, so the REST event loop and the gRPC
    # threads are not kept waiting behind a thread converting a large request (measured in bench/).
    sys.setswitchinterval(0.001)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
