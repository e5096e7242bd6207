"""``persona-pipeline`` command line: talk to, run and serve the persona simulator.

- ``chat``      you play the assistant, the model plays the persona (``--reverse``: the other way round)
- ``simulate``  a full dialogue between the simulator and an assistant backend, saved as a Conversation
- ``serve``     an OpenAI-compatible endpoint; model ``persona-simulator[-sft|-rl]:<persona>``
- ``writing-room`` the persona writing room: labelers write gold persona lines (HITL sessions)
- ``rate``      serve the human-evaluation page; submissions land where ``human_ratings`` reads them
- ``materialize`` every asset (or a selection) through ``dagster asset materialize``, one run per partition set
- ``new-trait`` the teacher writes a trait file (persona-vectors fields) from a name and a description
- ``import``    rewrite a peer-layout file (persona-vectors, Assistant-Axis, survey guide, pipeline doc) as our YAML
- ``export-vectors``, ``export-datasets``  GGUF control vectors; JSONL/Parquet datasets
- ``observe``   record the persona files' versions and print the stale persona partitions
- ``info``, ``partition-range``  helpers for scripts and the Makefile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .importers import KINDS
from .layout import layout
from .settings import NAMED_JOBS, PROFILES, data_root, home, profile

ADAPTERS = ("sft", "rl", "none")


class CliError(SystemExit):
    def __init__(self, message: str):
        super().__init__(f"persona-pipeline: error: {message}")


def _definitions() -> dict[str, str]:
    from . import loaders
    from .persona_simulator import definitions

    specs = [s.model_dump() for s in loaders.load_personas(data_root() / "personas")]
    found = loaders.load_surveys(data_root() / "surveys", {s["id"] for s in specs})
    surveys = {s.profile.id: s.model_dump() for s in found}
    return definitions(specs, surveys)


def adapter_path(kind: str) -> Path | None:
    """Where the trained adapter lives; a clear error if it has not been trained yet."""
    if kind == "none":
        return None
    path = layout().adapter(kind)
    if not (path / "adapter_config.json").exists():
        raise CliError(f"no {kind} adapter at {path}: materialise `{kind}_adapter` first (make demo)")
    return path


def _base() -> str:
    import os

    from .modelio import resolve_base

    return str(resolve_base(os.environ.get("PERSONA_POLICY_MODEL", "embedded"), home()))


def policy_backend(kind: str):
    from .backends import BackendSpec, make_backend

    adapter = adapter_path(kind)
    return make_backend(BackendSpec(model=_base(), adapter=str(adapter) if adapter else None), home())


def persona_backend(persona: str, kind: str):
    from .persona_simulator import PersonaBackend

    defs = _definitions()
    if persona not in defs:
        raise CliError(f"unknown persona {persona!r}; known: {', '.join(sorted(defs))}")
    return PersonaBackend(policy_backend(kind), persona, defs[persona], name=f"persona-simulator-{kind}:{persona}")


def _assistant():
    from .defs.resources import model_resource_from_env

    return model_resource_from_env("assistant").backend()


def sampling(args):
    """The persona's sampling from the CLI options (defaults: temperature 0.8, top-p 0.9, repetition penalty 1.3)."""
    from .backends import SamplingParams

    return SamplingParams(
        max_new_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=getattr(args, "seed", None),
    )


def pick_topic(persona: str, topic: str | None, seed: int) -> str:
    """``--topic`` as given, else a held-out topic (never in training data) drawn by ``seed``, on the persona's affinity."""
    if topic:
        return topic
    from . import loaders
    from .teacher_dialogues import plan_dialogues

    specs = {s.id: s for s in loaders.load_personas(data_root() / "personas")}
    if persona not in specs:  # a survey person: no affinity, any held-out topic
        topics = [t for t in loaders.load_topics(data_root() / "topics.yaml") if t.split == "heldout"]
        return topics[seed % len(topics)].text
    return plan_dialogues(specs[persona], loaders.load_topics(data_root() / "topics.yaml"), 1, seed, "heldout")[0].topic


def _chat(args) -> int:
    from .prompts import assistant_chat
    from .teacher_dialogues import clean_persona_line

    params = sampling(args)
    # --reverse: the model is the assistant the simulator is meant to test (PERSONA_ASSISTANT_*), not the simulator
    model = persona_backend(args.persona, args.adapter) if not args.reverse else _assistant()
    you, it = ("persona", "assistant") if args.reverse else ("assistant", args.persona)
    if not args.reverse:
        model.topic = pick_topic(args.persona, args.topic, args.seed)
        print(f"topic: {model.topic}", file=sys.stderr)
    print(f"You are the {you}; the model is {it}. Empty line or Ctrl-D to stop.", file=sys.stderr)
    turns: list[dict] = []
    if not args.reverse:
        line, ended = clean_persona_line(model.complete([turns], params)[0], "")
        turns.append({"role": "user", "content": line})
        print(f"{it}> {line}")
        if ended:
            print(f"({it} ended the conversation)", file=sys.stderr)
            return 0
    while True:
        try:
            line = input(f"{you}> ").strip()
        except EOFError:
            break
        if not line:
            break
        turns.append({"role": "assistant" if not args.reverse else "user", "content": line})
        chat = turns if not args.reverse else assistant_chat(turns)
        reply, ended = model.complete([chat], params)[0], False
        if not args.reverse:
            reply, ended = clean_persona_line(reply, "")
        turns.append({"role": "user" if not args.reverse else "assistant", "content": reply})
        print(f"{it}> {reply}")
        if ended:
            print(f"({it} ended the conversation)", file=sys.stderr)
            break
    return 0


def _simulate(args) -> int:
    from .storage import write_json
    from .teacher_dialogues import Dialogue, converse

    sim = persona_backend(args.persona, args.adapter)
    sim.topic = pick_topic(args.persona, args.topic, args.seed)
    d = Dialogue(id=f"{args.persona}-{int(time.time())}", persona_id=args.persona, topic=sim.topic, scenario_type="cli")
    (conv,) = converse(
        [d],
        {args.persona: sim},
        _assistant(),
        args.turns,
        args.max_tokens,
        seed=args.seed,
        model_name=sim.name,
        params=sampling(args),
    )
    print(f"topic: {conv.topic}", file=sys.stderr)
    for t in conv.turns:
        print(f"{args.persona if t.role == 'user' else 'assistant'}> {t.content}")
    if conv.metadata.ended_by_stop_rule:
        print(f"({args.persona} ended the conversation at turn {len(conv.turns)})", file=sys.stderr)
    out = Path(args.out) if args.out else layout().simulations / f"{conv.id}.json"
    write_json(out, conv.model_dump(mode="json"))
    print(f"saved {out}", file=sys.stderr)
    return 0


def serve_backends(adapters: list[str]) -> dict:
    """Model name → backend: raw ``base``/``sft``/``rl`` and ``persona-simulator[-kind]:<id>``; loaded lazily."""
    from .persona_simulator import LazyBackend, PersonaBackend

    defs = _definitions()
    out: dict = {}
    for kind in adapters:
        if kind != "none":
            adapter_path(kind)  # fail now, not on the first request
        raw = LazyBackend(lambda k=kind: policy_backend(k), name="base" if kind == "none" else kind)
        out[raw.name] = raw
        for pid, definition in defs.items():
            names = [f"persona-simulator-{kind}:{pid}"] + ([f"persona-simulator:{pid}"] if kind == adapters[0] else [])
            for name in names:
                out[name] = PersonaBackend(raw, pid, definition, name=name)
    return out


def _serve(args) -> int:
    from .serve import create_app, guard_for, run_server
    from .vectors import resolver

    guard = guard_for(args.host, args.api_key, args.allowed_host)
    backends = serve_backends(args.adapters)
    print(
        f"serving {len(backends)} models on http://{args.host}:{args.port}/v1 (e.g. persona-simulator:{next(iter(_definitions()))})"
        + (" — API key required" if guard.api_key else ""),
        file=sys.stderr,
    )
    # requests may steer with the pipeline's vectors, by name: {"steering": [{"vector": "humorous", "layer": 15, "coef": 4}]}
    app = create_app(backends, vectors=resolver(home()), guard=guard, docs=args.docs, max_queue=args.max_queue)
    run_server(app, host=args.host, port=args.port)
    return 0


def _partition_range(args) -> int:
    """Print ``first...last`` of a partition set, for ``dagster asset materialize --partition-range``."""
    from .defs.assets import _common as c

    parts = {
        "persona": c.persona_partitions,
        "role": c.role_partitions,
        "trait": c.trait_partitions,
        "checkpoint": c.checkpoint_partitions,
    }
    keys = parts[args.kind].get_partition_keys()
    if not keys:
        raise CliError(f"no {args.kind} partitions under {data_root()}")
    print(f"{keys[0]}...{keys[-1]}")
    return 0


def _check_inputs() -> None:
    """Every file under data_assets/ validated before any stage (or model) starts: one line naming file/record/field."""
    from .loaders import InputError, load_all

    try:
        found = load_all(data_root(), warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    except InputError as e:
        raise CliError(str(e)) from None
    print("inputs ok: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in found.items()), file=sys.stderr)


def _materialize(args) -> int:
    """``make demo``: the whole DAG (or ``--select``) in dependency order, one Dagster run per stage.

    The terminal shows a line per stage and step (``--verbose``: the raw Dagster output); each
    stage's full output is kept under ``<home>/runs/<stamp>/``. It ends with a short summary.
    """
    from .defs.runplan import check_results, run
    from .run_summary import summary
    from .storage import write_json

    if args.profile:
        os.environ["PERSONA_PIPELINE_PROFILE"] = args.profile  # the stage runs inherit it
    _check_inputs()
    selection = NAMED_JOBS[args.job] if args.job else args.select
    log_dir = None if args.verbose else layout().runs / time.strftime("%Y%m%dT%H%M%S")
    say = lambda m: print(m, file=sys.stderr, flush=True)
    try:
        timings = run(selection, dry_run=args.dry_run, log=say, log_dir=log_dir)
    except subprocess.CalledProcessError as e:
        raise CliError(f"a stage failed ({e.output or 'see the output above'})") from None
    if timings:
        total = sum(t["seconds"] for t in timings)
        write_json(
            layout().runs / f"materialize-{time.strftime('%Y%m%dT%H%M%S')}.json",
            {"stages": timings, "seconds": total},
        )
        _export_quietly(say)
        n_assets = sum(len(t["assets"]) for t in timings)
        say("\n" + summary(home(), check_results(), total, n_assets, log_dir or layout().runs))
    return 0


def _export_quietly(say) -> None:
    """After a run: vectors as GGUF and datasets as JSONL/Parquet, one line each (a failure is reported, not fatal)."""
    from .dataset_export import export_from_assets
    from .gguf_export import export_all

    try:
        vectors = export_all(home())
        datasets = export_from_assets(home())
    except (OSError, ValueError, KeyError) as e:
        say(f"warning: export after the run failed: {e}")
        return
    if vectors:
        say(f"exports:     {len(vectors)} GGUF control vectors next to their .safetensors (llama.cpp --control-vector)")
    if datasets:
        say(f"exports:     datasets in {layout().exports} (JSONL + Parquet; datasets.load_dataset / TRL SFTTrainer)")


def _rate(args) -> int:
    """Serve the page written by the ``human_eval_page`` asset; ratings go to ``ratings_dir()``."""
    from .rating_server import serve_ratings
    from .settings import ratings_dir

    page = layout().human_eval
    if not (page / "index.html").exists():
        raise CliError(f"{page}/index.html: materialise human_eval_page first (make demo)")
    print(f"rating page on http://{args.host}:{args.port}/ — ratings are saved to {ratings_dir()}", file=sys.stderr)
    serve_ratings(page, ratings_dir(), host=args.host, port=args.port, key=args.api_key)
    return 0


def _writing_room(args) -> int:
    """The persona writing room: labelers write gold persona lines against the assistant model."""
    from . import loaders
    from .persona_simulator import LazyBackend
    from .writing_room import guard_for, serve_writing_room, writing_room_app

    specs = loaders.load_personas(data_root() / "personas")
    topics = loaders.load_topics(data_root() / "topics.yaml")
    kind = args.simulator
    if kind == "auto":
        kind = "sft" if (layout().adapter("sft") / "adapter_config.json").exists() else "none"
    hitl_dir = Path(args.hitl_dir) if args.hitl_dir else data_root() / "hitl"
    app = writing_room_app(
        specs,
        [t for t in topics if t.split == "train"],  # held-out topics stay unseen by training data
        LazyBackend(_assistant, name="assistant"),
        LazyBackend(lambda: policy_backend(kind), name=f"simulator-{kind}"),
        hitl_dir,
        _definitions(),
        guard_for(args.host, args.api_key),
        max_new_tokens=args.max_tokens,
    )
    print(f"writing room on http://{args.host}:{args.port}/ — sessions are saved to {hitl_dir}", file=sys.stderr)
    serve_writing_room(app, args.host, args.port, args.api_key)
    return 0


def _observe(_args) -> int:
    """Record the persona files' content hashes on the instance and list the stale dialogue partitions."""
    from .defs.sources import observe_report

    print(json.dumps(observe_report(), indent=2))
    return 0


def _import(args) -> int:
    """Rewrite peer-layout files (persona-vectors, Assistant-Axis, survey guide, pipeline doc) as our YAML."""
    from .importers import import_file
    from .loaders import InputError

    out = Path(args.out) if args.out else data_root()
    for src in args.files:
        try:
            dest = import_file(Path(src), out, args.kind, args.force)
        except InputError as e:
            raise CliError(str(e)) from None
        print(f"{src} -> {dest}")
        if Path(src).resolve().is_relative_to(out.resolve()):
            print(f"  now remove {src}: both files would define the same id", file=sys.stderr)
    return 0


def _new_trait(args) -> int:
    """A trait file written by the teacher (``PERSONA_TEACHER_*``), templates filling what it cannot supply."""
    from .defs.resources import model_resource_from_env
    from .loaders import InputError
    from .trait_generation import generate_trait, write_trait

    folder = Path(args.out) if args.out else data_root() / "traits"
    try:
        gen = generate_trait(
            model_resource_from_env("teacher").backend(), args.name, args.description, args.attempts, args.max_tokens
        )
        paths = write_trait(gen, folder, args.layout, args.force)
    except InputError as e:
        raise CliError(str(e)) from None
    print(json.dumps({"files": [str(p) for p in paths], **gen.summary()}, indent=2))
    return 0


def _export_vectors(_args) -> int:
    """Persona vectors, CMA-ES directions and the Assistant Axis as GGUF control vectors (llama.cpp, repeng)."""
    from .gguf_export import export_all

    print(json.dumps([e.summary() for e in export_all(home())], indent=2))
    return 0


def _export_datasets(_args) -> int:
    """conversations and sft_pairs as JSONL + Parquet for ``datasets.load_dataset`` and TRL's SFTTrainer."""
    from .dataset_export import export_from_assets

    out = export_from_assets(home())
    if not out:
        raise CliError(f"{layout().assets}: no conversations or sft_pairs yet; materialise the data stage first")
    print(json.dumps({k: {f: str(p) for f, p in v.items()} for k, v in out.items()}, indent=2))
    return 0


def _train_sft(args) -> int:
    """One SFT process; run it under ``accelerate launch`` for data-parallel training on several GPUs."""
    from .train_sft import run_job

    r = run_job(Path(args.job))
    print(json.dumps({"eval_loss": r.eval_loss, "base_eval_loss": r.base_eval_loss, "seconds": round(r.seconds, 1)}))
    return 0


def _info(_args) -> int:
    print(json.dumps({"home": str(home()), "data": str(data_root()), "profile": profile().model_dump()}, indent=2))
    return 0


def _server_security_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' (default: $PERSONA_PIPELINE_API_KEY, which keeps it out of `ps`)",
    )


def _sampling_options(parser: argparse.ArgumentParser) -> None:
    """Topic and sampling for the persona's lines (``chat``, ``simulate``)."""
    parser.add_argument(
        "--topic", help="what the persona wants to talk about (default: a held-out topic drawn by --seed)"
    )
    parser.add_argument("--seed", type=int, default=0, help="topic draw and sampling seed")
    parser.add_argument("--max-tokens", type=int, default=48, help="longest persona line, in tokens")
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.3, help="1.0: off; > 1 discourages repeating (local models)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persona-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    chat = sub.add_parser("chat", help="talk to a persona simulator")
    chat.add_argument("--persona", required=True)
    chat.add_argument("--adapter", choices=ADAPTERS, default="sft")
    chat.add_argument("--reverse", action="store_true", help="you play the persona, the model the assistant")
    _sampling_options(chat)
    chat.set_defaults(fn=_chat)
    sim = sub.add_parser("simulate", help="simulate a full dialogue and save it")
    sim.add_argument("--persona", required=True)
    sim.add_argument("--turns", type=int, default=8)
    sim.add_argument("--adapter", choices=ADAPTERS, default="sft")
    _sampling_options(sim)
    sim.add_argument("--out", help="where to save the Conversation JSON")
    sim.set_defaults(fn=_simulate)
    srv = sub.add_parser("serve", help="OpenAI-compatible endpoint for the simulator")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--adapters", nargs="+", choices=ADAPTERS, default=["sft", "rl", "none"])
    _server_security_options(srv)
    srv.add_argument("--allowed-host", action="append", help="a Host name to answer besides loopback ones (repeatable)")
    srv.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json (off by default)")
    srv.add_argument("--max-queue", type=int, default=64, help="requests queued per model before 503 + Retry-After")
    srv.set_defaults(fn=_serve)
    pr = sub.add_parser("partition-range", help="print first...last partition key")
    pr.add_argument("kind", choices=["persona", "role", "trait", "checkpoint"])
    pr.set_defaults(fn=_partition_range)
    rate = sub.add_parser("rate", help="serve the human-evaluation page and save ratings")
    rate.add_argument("--host", default="127.0.0.1")
    rate.add_argument("--port", type=int, default=8765)
    _server_security_options(rate)
    rate.set_defaults(fn=_rate)
    room = sub.add_parser("writing-room", help="web page where labelers write gold persona lines (HITL sessions)")
    room.add_argument("--host", default="127.0.0.1")
    room.add_argument("--port", type=int, default=8766)
    _server_security_options(room)
    room.add_argument("--hitl-dir", help="where sessions are saved (default: data_assets/hitl/, watched by the sensor)")
    room.add_argument("--simulator", choices=("auto", *ADAPTERS), default="auto", help="adapter proposing candidates")
    room.add_argument("--max-tokens", type=int, default=96, help="longest assistant answer / candidate")
    room.set_defaults(fn=_writing_room)
    mat = sub.add_parser(
        "materialize", help="materialise assets in dependency order, one Dagster run per partition set"
    )
    mat.add_argument("--select", default="*", help="asset selection, e.g. '*' or 'persona_vectors*' (comma-separated)")
    mat.add_argument(
        "--job", choices=list(NAMED_JOBS), help="a named job instead of --select (its stages run in dependency order)"
    )
    mat.add_argument("--profile", choices=list(PROFILES), help="run sizes (default: $PERSONA_PIPELINE_PROFILE or demo)")
    mat.add_argument("--dry-run", action="store_true", help="print the stages without running them")
    mat.add_argument("--verbose", action="store_true", help="show the raw Dagster output instead of the filtered view")
    mat.set_defaults(fn=_materialize)
    ts = sub.add_parser(
        "train-sft", help="train the SFT adapter from a job file (what sft_adapter hands to accelerate)"
    )
    ts.add_argument("--job", required=True, help="JSON written by train_sft.write_job")
    ts.set_defaults(fn=_train_sft)
    imp = sub.add_parser(
        "import",
        help="write our canonical YAML from a peer-layout file (persona-vectors, Assistant-Axis, survey guide…)",
    )
    imp.add_argument("files", nargs="+", help="peer-layout files (layout detected from folder name and keys)")
    imp.add_argument("--kind", choices=KINDS, help="the layout, when it cannot be detected")
    imp.add_argument("--out", help="data root to write into (default: $PERSONA_PIPELINE_DATA or data_assets/)")
    imp.add_argument("--force", action="store_true", help="replace an existing file")
    imp.set_defaults(fn=_import)
    nt = sub.add_parser("new-trait", help="write a trait file with the teacher (PERSONA_TEACHER_*) from a description")
    nt.add_argument("name", help="trait id and file name, e.g. anxious")
    nt.add_argument("description", help="what the trait is, in a sentence or two")
    nt.add_argument("--layout", choices=("yaml", "persona-vectors"), default="yaml", help="our YAML or trait_data_*/")
    nt.add_argument("--out", help="traits folder to write into (default: data_assets/traits/)")
    nt.add_argument("--force", action="store_true", help="replace an existing trait of that name")
    nt.add_argument("--attempts", type=int, default=2, help="teacher replies asked per field")
    nt.add_argument("--max-tokens", type=int, default=400, help="longest teacher reply, in tokens")
    nt.set_defaults(fn=_new_trait)
    sub.add_parser(
        "export-vectors", help="write every steering vector as a GGUF control vector next to its .safetensors"
    ).set_defaults(fn=_export_vectors)
    sub.add_parser(
        "export-datasets", help="write conversations and SFT pairs as JSONL + Parquet (datasets / TRL ready)"
    ).set_defaults(fn=_export_datasets)
    sub.add_parser(
        "observe", help="observe data_assets/personas and print which persona partitions are stale"
    ).set_defaults(fn=_observe)
    sub.add_parser("info", help="show where artifacts go and the active profile").set_defaults(fn=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
