"""Benchmark: ``persona-pipeline serve`` throughput at 16 concurrent clients vs one at a time,
next to Hugging Face's own ``transformers serve`` (with and without ``--continuous-batching``)
on the same converted model folder, the same prompts and the same greedy settings.

Every server is its own process on 127.0.0.1 (ours: ``persona-pipeline serve --adapters none``,
model ``base``) and gets the same requests over HTTP: first one at a time,
then from ``--clients`` threads at once (each sends its next request as soon as its last one
is answered). Our server batches requests that arrive together into one ``generate`` call,
so concurrency should multiply its throughput; outputs must stay identical to the
sequential run (greedy). Servers run one after another, never side by side.

    .venv/bin/python bench/serve.py [--n 32] [--clients 16] [--max-tokens 32] [--skip-hf]

Run it on an otherwise idle machine: on 2 shared cores any other process skews every number.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from generation import build_chats  # bench/ is on sys.path when run as a script

from persona_pipeline.modelio import convert_embedded, default_base_dir
from persona_pipeline.settings import home

_local = threading.local()


def ask(url: str, model: str, chat: list[dict], max_tokens: int) -> str:
    """One request from this client thread's own keep-alive connection, as a real client holds one."""
    if not hasattr(_local, "client"):
        _local.client = httpx.Client(timeout=900)
    body = {"model": model, "messages": chat, "max_tokens": max_tokens, "temperature": 0}
    r = _local.client.post(f"{url}/chat/completions", json=body)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def drive(url: str, model: str, chats: list, max_tokens: int, clients: int) -> tuple[list[str], float]:
    """All ``chats`` from ``clients`` closed-loop clients; (answers in order, wall seconds)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(lambda c: ask(url, model, c, max_tokens), chats))
    return out, time.perf_counter() - start


def measure(label: str, url: str, model: str, chats, args, tok) -> dict:
    """One server: sequential then concurrent; prints one line, returns the figures."""

    def count_tokens(texts: list[str]) -> int:  # one tokenizer counts every server's tokens
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    ask(url, model, chats[0], 2)  # warm-up: lazy loads, first-call overheads
    seq, t_seq = drive(url, model, chats, args.max_tokens, 1)
    conc, t_conc = drive(url, model, chats, args.max_tokens, args.clients)
    tokens = count_tokens(seq)
    row = {
        "server": label,
        "seq_tok_s": tokens / t_seq,
        "conc_tok_s": count_tokens(conc) / t_conc,
        "seq_req_s": len(chats) / t_seq,
        "conc_req_s": len(chats) / t_conc,
        "same": sum(a == b for a, b in zip(seq, conc)),
        "answers": seq,
    }
    row["speedup"] = row["conc_tok_s"] / row["seq_tok_s"]
    print(
        f"{label:<42} 1 client {row['seq_tok_s']:7.1f} tok/s {row['seq_req_s']:5.2f} req/s | "
        f"{args.clients} clients {row['conc_tok_s']:7.1f} tok/s {row['conc_req_s']:5.2f} req/s | "
        f"{row['speedup']:.2f}x | greedy identical {row['same']}/{len(chats)}",
        flush=True,
    )
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], health: str, log: Path) -> subprocess.Popen:
    """Start a server process (its own session, its own interpreter: no GIL shared with the clients)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, 9)
    raise RuntimeError(f"{' '.join(cmd)} did not come up in 300 s; see {log}")


def servers(model_dir: Path, skip_hf: bool) -> list[tuple[str, list[str], str, str]]:
    """(label, command, health path, model name) for each server, all on the same converted folder."""
    bindir = Path(sys.executable).parent
    ours = [str(bindir / "persona-pipeline"), "serve", "--adapters", "none", "--port", "{port}"]
    out = [("persona-pipeline serve (batched)", ours, "/v1/models", "base")]  # base = the embedded model
    if not skip_hf:
        hf = [shutil.which("transformers", path=str(bindir)) or "transformers", "serve", str(model_dir)]
        hf += ["--host", "127.0.0.1", "--port", "{port}", "--device", "cpu", "--dtype", "float32"]
        out.append(("transformers serve", [*hf, "--no-continuous-batching"], "/health", str(model_dir)))
        out.append(
            ("transformers serve --continuous-batching", [*hf, "--continuous-batching"], "/health", str(model_dir))
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="requests per run")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--skip-hf", action="store_true", help="only our server (no transformers serve anchor)")
    args = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; {args.n} requests, "
        f"greedy, max_tokens={args.max_tokens}",
        flush=True,
    )

    from transformers import AutoTokenizer

    model_dir = default_base_dir(home())
    convert_embedded(model_dir)  # a no-op once converted; every server loads this folder
    tok = AutoTokenizer.from_pretrained(model_dir)
    chats = build_chats(args.n)
    rows = []
    for label, cmd, health, model in servers(model_dir, args.skip_hf):
        port = free_port()
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-serve-{len(rows)}.log"
        proc = launch([c.replace("{port}", str(port)) for c in cmd], f"http://127.0.0.1:{port}{health}", log)
        try:
            rows.append(measure(label, f"http://127.0.0.1:{port}/v1", model, chats, args, tok))
        except httpx.HTTPError as e:
            print(f"{label:<42} failed: {e} (log: {log})", flush=True)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=60)
    ours = rows[0]
    for row in rows[1:]:
        agree = sum(a == b for a, b in zip(ours["answers"], row["answers"]))
        print(
            f"ours vs {row['server']}: {ours['conc_tok_s'] / row['conc_tok_s']:.2f}x at {args.clients} clients, "
            f"{ours['seq_tok_s'] / row['seq_tok_s']:.2f}x one at a time; same greedy text {agree}/{len(chats)}"
        )


if __name__ == "__main__":
    main()
