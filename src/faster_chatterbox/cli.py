"""`faster-chatterbox` command line: speak, convert, init-random, bench, ab, serve, render-book.

User errors (bad text, files, parameters, devices, no network) print one line and exit with status 2;
Ctrl-C exits with 130, also during start-up. Neither prints a stack trace. Everything heavy (torch, the
models) is imported inside main's handlers: this module and the package's __init__ import nothing heavy.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# Speech runs at about 15 characters per second; at a brisk 25 the audio is hardly ever shorter, so an output
# size estimated at that rate errs low (check_output_path refuses a file system with less free).
BRISK_CHARS_PER_SECOND = 25
LOCAL_RAY = "local"  # --ray without an address: start a Ray cluster on this machine


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .settings import DEFAULT_PRESET, PRESET_NAMES

    p.add_argument("--checkpoint", metavar="DIR", help="local checkpoint directory (default: download ResembleAI/chatterbox)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES,
                   help=f"exact: upstream's algorithms in float32; fast: measured-lossless speed-ups; fastest: also "
                        f"lossy ones (default: {DEFAULT_PRESET})")
    p.add_argument("--decoder", default="cfm", choices=("cfm", "meanflow"),
                   help="S3Gen decoder: cfm (the model's own) or meanflow (Chatterbox-Turbo's 2-step one)")
    _add_model_name(p, "give --language")


def _add_model_name(p: argparse.ArgumentParser, languages: str) -> None:
    from .settings import MODEL_NAMES

    p.add_argument("--model", default="chatterbox", choices=MODEL_NAMES,
                   help="chatterbox (English), turbo or nano (GPT-2 T3, paralinguistic tags such as [laugh]; "
                        f"meanflow decoder whatever --decoder says), multilingual (23 languages: {languages}), "
                        "flash (Chatterbox-Flash, block-diffusion T3) (default: %(default)s)")


def _load_model(args, watermark: bool = True):
    from .family import load_model

    return load_model(args.model, args.checkpoint, device=args.device, preset=args.preset, watermark=watermark,
                      decoder=args.decoder)


def _read_text(args) -> str:
    if args.text is not None and args.text_file is not None:
        raise ValueError("give the text either as an argument or with --text-file, not both")
    if args.text_file is not None:
        try:
            return Path(args.text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read text file {args.text_file}: {exc}") from exc
    if args.text is None:
        raise ValueError("no text: give it as an argument or with --text-file")
    return args.text


def cmd_speak(args) -> None:
    from .audio.io import MIN_BYTES_PER_SECOND, check_output_path, write_audio

    text = _read_text(args)
    if not text.strip():
        raise ValueError("text is empty: give some words to speak")
    suffix = Path(args.output).suffix.lower()
    seconds = len(text) / BRISK_CHARS_PER_SECOND
    # before any work: an output that cannot be written would otherwise fail only after the synthesis
    check_output_path(args.output, min_free_bytes=int(seconds * MIN_BYTES_PER_SECOND.get(suffix, 0)))
    language = _language_args(args)
    tts = _load_model(args, watermark=not args.no_watermark)  # warns when the weights are random
    given = {name: getattr(args, name) for name in ("exaggeration", "cfg_weight", "temperature")
             if getattr(args, name) is not None}  # default: the model's
    result = tts.synthesize(text, **language, audio_prompt_path=args.voice, **given, seed=args.seed,
                            max_new_tokens=args.max_new_tokens, n_timesteps=args.n_timesteps,
                            optimize_quality=args.optimize_quality, progress=True)
    write_audio(args.output, result.audio, tts.sr)
    retried = sum(c.attempts > 1 for c in result.chunks)
    print(f"wrote {args.output}: {len(result.audio) / tts.sr:.2f} s at {tts.sr} Hz from {len(result.chunks)} chunk(s)"
          f"{f', {retried} regenerated' if retried else ''} in {result.timings['total_s']:.1f} s", file=sys.stderr)


def _language_args(args) -> dict:
    """speak's language for the multilingual model, checked before anything loads."""
    if args.model != "multilingual":
        if args.language is not None:
            raise ValueError("--language needs --model multilingual (the English model speaks English)")
        return {}
    from .text.multilingual import check_language

    if args.language is None:
        raise ValueError("--model multilingual needs --language, e.g. --language fr")
    return {"language_id": check_language(args.language)}


def cmd_convert(args) -> None:
    from .audio.io import check_output_path, write_audio
    from .vc import ChatterboxVC

    check_output_path(args.output)
    options = dict(device=args.device, preset=args.preset, watermark=not args.no_watermark)
    vc = ChatterboxVC.from_local(args.checkpoint, **options) if args.checkpoint else ChatterboxVC.from_pretrained(**options)
    wav = vc.generate(args.input, target_voice_path=args.voice, seed=args.seed)[0].numpy()
    write_audio(args.output, wav, vc.sr)
    print(f"wrote {args.output}: {len(wav) / vc.sr:.2f} s at {vc.sr} Hz in the voice of "
          f"{args.voice or 'the built-in voice'}", file=sys.stderr)


def cmd_init_random(args) -> None:
    from .random_checkpoint import write_random_checkpoint

    write_random_checkpoint(args.dir, seed=args.seed, small=args.small, meanflow=args.meanflow, model=args.model)
    size = "small test" if args.small else "full-size"
    print(f"wrote a {size} RANDOM-weight {args.model} checkpoint to {args.dir}: it speaks noise, for tests and "
          "benchmarks only", file=sys.stderr)


def cmd_bench(args) -> None:
    from .bench import run_bench

    run_bench(args)


def cmd_serve(args) -> None:
    extra = "ray" if args.ray else "server"
    try:
        from .server.main import serve

        if args.ray:
            from .server.ray_serve import RayEndpoint, config_from_args, serve_on_ray
    except ImportError as exc:
        raise ValueError(f"the server needs its extra ({exc.name} is missing): "
                         f"pip install 'faster-chatterbox[{extra}]'") from None
    if not args.ray:
        if args.replicas is not None or args.min_replicas is not None or args.max_replicas is not None:
            raise ValueError("--replicas, --min-replicas and --max-replicas need --ray")
        return serve(args)
    address = None if args.ray == LOCAL_RAY else args.ray
    serve_on_ray(config_from_args(args), RayEndpoint(address, args.host, args.port))


def cmd_render_book(args) -> int:
    from .book import BookModel, Speech, render_book, summary_lines

    model = BookModel(args.checkpoint, device=args.device, preset=args.preset, decoder=args.decoder)
    speech = Speech(exaggeration=args.exaggeration, cfg_weight=args.cfg_weight, temperature=args.temperature,
                    max_new_tokens=args.max_new_tokens)
    report = render_book(args.book, args.output_dir, model=model, speech=speech, voice=args.voice, seed=args.seed,
                         use_ray=args.ray is not None, ray_address=None if args.ray == LOCAL_RAY else args.ray,
                         num_cpus=args.num_cpus, num_gpus=args.num_gpus, retries=args.retries,
                         watermark=not args.no_watermark)
    for line in summary_lines(report):
        print(line, file=sys.stderr)
    return 1 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    from .settings import DEFAULT_PRESET, MODEL_NAMES, PRESET_NAMES
    from .quality.ab import add_ab_command

    parser = argparse.ArgumentParser(prog="faster-chatterbox", description="Fast, faithful Chatterbox text-to-speech.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("speak", help="synthesise speech to an audio file")
    p.add_argument("text", nargs="?", help="the text to speak")
    p.add_argument("--text-file", metavar="F", help="read the text from a UTF-8 file")
    p.add_argument("-o", "--output", required=True, help="output audio file (.wav, .flac, .ogg, .opus, .mp3)")
    p.add_argument("--voice", metavar="WAV", help="reference clip of the voice to clone (default: the built-in voice)")
    _add_model_args(p)
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--max-new-tokens", type=int, default=1000,
                   help="speech-token cap per chunk of text, 25 per second (default 1000)")
    p.add_argument("--n-timesteps", type=int, help="flow-matching steps of the decoder (default: the preset's)")
    p.add_argument("--optimize-quality", action="store_true",
                   help="post-process: high-pass, de-click, trim, loudness normalisation, peak limit")
    p.add_argument("--exaggeration", type=float, help="default: the model's (0.5; Turbo/Nano ignore it)")
    p.add_argument("--cfg-weight", type=float, help="default: the model's (0.5; Turbo/Nano ignore it)")
    p.add_argument("--temperature", type=float, help="default: the model's (0.8; Flash: its preset's, 0.6)")
    p.add_argument("--no-watermark", action="store_true", help="do not watermark the output")
    p.add_argument("--language", metavar="XX", help="the multilingual model's language id (ar da de el en es fi fr "
                                                    "he hi it ja ko ms nl no pl pt ru sv sw tr zh)")
    p.set_defaults(func=cmd_speak)

    p = sub.add_parser("convert", help="voice conversion: the speech of an audio file in another voice")
    p.add_argument("input", help="the source speech (an audio file)")
    p.add_argument("-o", "--output", required=True, help="output audio file (.wav, .flac, .ogg, .opus, .mp3)")
    p.add_argument("--voice", metavar="WAV", help="clip of the target voice (default: the built-in voice)")
    p.add_argument("--checkpoint", metavar="DIR", help="local checkpoint directory (default: download ResembleAI/chatterbox)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES)
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--no-watermark", action="store_true", help="do not watermark the output")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("init-random", help="write a random-weight checkpoint in the official layout")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--small", action="store_true", help="tiny model sizes for fast tests (not the official shapes)")
    p.add_argument("--meanflow", action="store_true", help="also write a random s3gen_meanflow.safetensors")
    p.add_argument("--model", default="chatterbox", choices=MODEL_NAMES,
                   help="which official layout (default: %(default)s)")
    p.set_defaults(func=cmd_init_random)

    p = sub.add_parser("bench", help="time one fixed job stage by stage")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="DIR", help="checkpoint directory")
    source.add_argument("--random-weights", action="store_true", help="make (once) and use a full-size random checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES)
    p.add_argument("--decoder", default="cfm", choices=("cfm", "meanflow"), help="S3Gen decoder (ours)")
    p.add_argument("--scenario", choices=("stages", "text", "jobs"), default="stages",
                   help="stages: one sentence, stage by stage (default); text: a long text, whole; "
                        "jobs: --jobs requests one after another, then all at once")
    p.add_argument("--tokens", type=int, default=100, help="stages: decode steps (default 100)")
    p.add_argument("--chars", type=int, default=1200,
                   help="text: characters of the corpus chapter (default 1200); jobs: at most, per request")
    p.add_argument("--jobs", type=int, default=8, help="jobs: concurrent requests (default 8)")
    p.add_argument("--stream", action="store_true", help="text: also time the first streamed piece")
    p.add_argument("--compare-upstream", action="store_true", help="also run upstream chatterbox-tts on the same job")
    p.add_argument("--json", metavar="FILE", help="append the result as one JSON line to FILE")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="serve OpenAI's speech API, voices, a web page and metrics over HTTP")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="DIR", help="local checkpoint directory (default: the hub model)")
    source.add_argument("--repo-id", help="hub repository to download (default: the --model's own release)")
    source.add_argument("--random-weights", nargs="?", const="full", choices=("full", "small"),
                        help="make (once) and use a random-weight checkpoint of the --model's layout, full-size "
                             "or small: it speaks noise")
    _add_model_name(p, "each request's language, default en")
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES)
    p.add_argument("--no-watermark", action="store_true", help="do not watermark the output")
    p.add_argument("--voices-dir", metavar="DIR", help="voice library (default: ~/.cache/faster-chatterbox/voices; "
                                                      "'none': built-in voice only, no uploads)")
    p.add_argument("--max-input-chars", type=int, default=4096, help="longest input (default 4096, as OpenAI)")
    p.add_argument("--max-queue", type=int, default=64, help="speech requests waiting or running before 429 (default 64)")
    p.add_argument("--max-concurrency", type=int, help="speech requests synthesised at once (default: the T3 batch size)")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds before a request is cancelled (504)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $FASTER_CHATTERBOX_API_KEY)")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="allow this browser origin (repeatable)")
    p.add_argument("--wyoming-port", type=int, help="also serve Wyoming TTS (Home Assistant) on this port, e.g. 10200")
    ray = p.add_argument_group("Ray Serve (extra [ray]; docs/scaling.md)")
    ray.add_argument("--ray", nargs="?", const=LOCAL_RAY, metavar="ADDRESS",
                     help="serve on Ray Serve: replicas behind one endpoint; ADDRESS of a running cluster "
                          "('auto', ray://HOST:10001), none: start one on this machine")
    replicas = ray.add_mutually_exclusive_group()
    replicas.add_argument("--replicas", type=int, help="a fixed number of replicas, one model each (default 1)")
    replicas.add_argument("--min-replicas", type=int, help="autoscale on ongoing requests from this many replicas")
    ray.add_argument("--max-replicas", type=int, help="... to at most this many")
    ray.add_argument("--num-cpus", type=float, help="CPUs of one replica (default 1)")
    ray.add_argument("--num-gpus", type=float, help="GPUs of one replica (default 0; 1 per model on GPUs)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("render-book", help="a book (.txt, .epub) to one audio file per chapter, resumable, "
                                          "in this process or across a Ray cluster")
    p.add_argument("book", help="a UTF-8 text file (chapters at heading lines) or an EPUB (its spine)")
    p.add_argument("-o", "--output-dir", required=True, metavar="DIR",
                   help="chunks/, chapters/NNN.wav and manifest.json; a re-run resumes what is missing")
    p.add_argument("--ray", nargs="?", const=LOCAL_RAY, metavar="ADDRESS",
                   help="render the chunks as Ray tasks on the cluster at ADDRESS ('auto', ray://HOST:10001; "
                        "none: start one on this machine); default: in this process (extra [ray])")
    p.add_argument("--voice", metavar="WAV", help="reference clip of the voice (default: the built-in voice)")
    p.add_argument("--seed", type=int, help="the book's seed (default: the manifest's, else 0)")
    _add_model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=1000, help="speech-token cap per chunk (default 1000)")
    p.add_argument("--exaggeration", type=float, default=0.5)
    p.add_argument("--cfg-weight", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--retries", type=int, default=2, help="new attempts for a chunk whose render fails (default 2)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="--ray: CPUs per chunk task (default 1)")
    p.add_argument("--num-gpus", type=float, default=0.0,
                   help="--ray: GPUs per chunk task (default 0; 1, or 0.5 for two models per GPU)")
    p.add_argument("--no-watermark", action="store_true", help="do not watermark the chapters")
    p.set_defaults(func=cmd_render_book)

    add_ab_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status, except after a Ctrl-C: then the process exits at once."""
    try:
        # numpy before torch: torch's initialisation imports numpy itself and, should that import fail for any
        # reason, a Ctrl-C included, carries on without it, swallowing the interrupt.
        import numpy  # noqa: F401

        args = build_parser().parse_args(argv)  # imports torch: a Ctrl-C there is handled as anywhere else
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        status = args.func(args)
    except (ValueError, OSError) as exc:  # user errors, CheckpointError included (a ValueError)
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever the message holds
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        _exit_at_once(EXIT_INTERRUPTED)
    return status or 0


def _exit_at_once(status: int) -> None:
    """Exit without the interpreter's finalisation, which can go wrong after a Ctrl-C in two ways: the engine's
    daemon threads may still be in torch kernels when C++ destructors run ("terminate called without an active
    exception", SIGABRT); and a Ctrl-C during torch's import can leave CPython's unhandled-interrupt flag set
    (as an interrupt passing through code run by PyRun_String does), so that under `python -m` the process
    kills itself with SIGINT at exit although the interrupt was handled."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
