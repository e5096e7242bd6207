"""Benchmark: concurrent vs sequential requests through OpenAIBackend, over loopback HTTP.

Two servers, both on 127.0.0.1:
  1. ``serve.create_app`` running the embedded model. One local model behind a
     lock serves one request at a time, so concurrency should give ~1x: the
     client overlaps requests, the model cannot.
  2. A stub whose handler only sleeps (default 200 ms). This is latency-bound,
     like a remote API, and shows what client-side concurrency buys there.

    .venv/bin/python bench/endpoint.py [--n 8] [--max-new-tokens 32] [--stub-n 32] [--repeat 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os

import torch
from fastapi import FastAPI
from generation import build_chats, load_embedded, measure  # bench/ is on sys.path when run as a script

from persona_pipeline.backends import SamplingParams
from persona_pipeline.backends.openai_compat import OpenAIBackend
from persona_pipeline.serve import create_app, serving

MODEL = "smollm2-135m-instruct"


def stub_app(delay_s: float) -> FastAPI:
    """Answers every chat with its last message after ``delay_s``: pure latency, no compute."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        await asyncio.sleep(delay_s)
        message = {"role": "assistant", "content": body["messages"][-1]["content"]}
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
        }

    return app


def compare(label: str, url: str, model: str, chats, params: SamplingParams, concurrency: int, repeat: int) -> None:
    """Time the same batch at concurrency 1 and ``concurrency``; print both, the ratio, and whether outputs agree."""
    backends = {
        c: OpenAIBackend(model, base_url=url, concurrency=c, timeout_s=600, max_retries=0) for c in (1, concurrency)
    }
    runs = measure(repeat, {c: functools.partial(b.complete, chats, params) for c, b in backends.items()})
    (seq, t_seq), (conc, t_conc) = runs[1], runs[concurrency]
    same = sum(a == b for a, b in zip(seq, conc))
    print(label)
    print(f"  sequential (concurrency 1): {t_seq:7.2f} s")
    print(f"  concurrent (concurrency {concurrency}): {t_conc:7.2f} s")
    print(f"  speed-up: {t_seq / t_conc:.2f}x   outputs identical: {same}/{len(chats)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="chats sent to the model server")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--stub-n", type=int, default=32, help="chats sent to the latency-bound stub")
    ap.add_argument("--stub-delay", type=float, default=0.2, help="seconds the stub sleeps per request")
    ap.add_argument("--repeat", type=int, default=1, help="report the best of this many runs per mode")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start, torch threads={torch.get_num_threads()}")

    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0)
    with serving(create_app({MODEL: load_embedded(batch_size=1)})) as url:
        OpenAIBackend(MODEL, base_url=url).complete(build_chats(1), SamplingParams(max_new_tokens=2))  # warm-up
        compare(
            f"embedded model behind a lock ({args.n} chats, greedy, max_tokens={args.max_new_tokens}): "
            "compute-bound, ~1x expected",
            url,
            MODEL,
            build_chats(args.n),
            params,
            args.concurrency,
            args.repeat,
        )

    with serving(stub_app(args.stub_delay)) as url:
        compare(
            f"stub sleeping {args.stub_delay * 1000:.0f} ms per request ({args.stub_n} chats): "
            "LATENCY-BOUND, shows client-side concurrency only",
            url,
            "stub",
            build_chats(args.stub_n),
            params,
            args.concurrency,
            args.repeat,
        )


if __name__ == "__main__":
    main()
