"""The local LLM server process: llama.cpp's own HTTP server, from the prebuilt xllamacpp wheel.

`python -m freshkb.serving.llm_process --model FILE.gguf --port N ...` serves the OpenAI
chat-completions API (/v1/chat/completions, /v1/models, /health) on 127.0.0.1 until SIGTERM.
serving/llm_server.py starts and stops it; nothing else imports it. xllamacpp binds llama.cpp's
C++ server (continuous batching, `parallel` slots), so no compiler is needed at setup.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The server's options; llm_server.server_command writes them."""
    parser = argparse.ArgumentParser(prog="python -m freshkb.serving.llm_process")
    parser.add_argument("--model", required=True, help="GGUF file to serve")
    parser.add_argument("--model-alias", required=True, help="id listed by /v1/models")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ctx", type=int, default=4096, help="context per parallel slot")
    parser.add_argument("--parallel", type=int, default=1, help="requests decoded at once")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--threads-batch", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; the log says where it listens once it does."""
    import xllamacpp  # a 100 MB native extension: loaded only in the server process

    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.model_alias}
    params.hostnames = [args.host]
    params.port = args.port
    # llama.cpp's context is shared by the slots: each slot gets n_ctx / n_parallel.
    params.n_ctx = args.ctx * args.parallel
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads_batch
    server = xllamacpp.Server(params)  # returns once listening; the model loads behind it
    print(
        f"llm_process: listening on {server.listening_address} "
        f"({time.monotonic() - started:.1f}s); /v1/models answers 503 until the model is loaded",
        flush=True,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
