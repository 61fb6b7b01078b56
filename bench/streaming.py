#!/usr/bin/env python3
"""Streaming decoding on the CPU: PyTorch streaming vs non-streaming RTF at batch 1,
sherpa-onnx's online recognizer on the streaming export vs its offline recognizer on the
non-streaming export of the same model, and the latency of a chunk.

Usage:
  python bench/streaming.py                 # default causal model, 4 x 8 s, 2 threads
  python bench/streaming.py --num-utts 2 --duration 4 --repeats 1 --write 0   # quick look

The model is icefall's default Zipformer made causal (``--causal 1 --chunk-size 16
--left-context-frames 128``, 65.5M parameters plus 761,344 adapter parameters), random
weights made distinct (bench/export.py), the joiner's blank bias set so that greedy search
emits on about one encoder frame in eight (bench/decode.py). Every path decodes the same
utterances one at a time (batch 1), greedy search, 2 threads:

- pytorch offline: ``forward_encoder`` (the full causal forward, chunk 16 and 128 frames of
  left context by attention mask) and ``greedy_search_batch``, what decode.py runs;
- pytorch streaming: ``streaming_search`` with one stream, what streaming_decode.py runs
  (windows of 2 * 16 + 13 feature frames, the states carried between chunks);
- sherpa-onnx offline / online: ``OfflineRecognizer`` on ``export-onnx.py``'s files and
  ``OnlineRecognizer`` on ``export-onnx-streaming.py``'s files of the same model, from
  samples (0.66 s of silence appended for the online recognizer, not counted as audio).

The PyTorch paths start from the same features (lhotse fbank, not timed). RTF = decoding
time / audio duration, the minimum over ``--repeats`` alternating passes after a warm-up.
Per chunk: the compute of one ``decode_one_chunk`` call (encoder and greedy search over
the chunk) at batch 1, median and 90th percentile over every chunk of the utterances, for
chunk sizes 8, 16 and 32; and the algorithmic latency a chunk adds whatever the compute:
a frame's output needs the rest of its chunk and the 13 feature frames (130 ms) the
frontend reads beyond it, so 2C x 10 ms + 130 ms for a chunk's first frame, 130 ms for its
last. Writes the "streaming" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.decode import calibrate_blank  # noqa: E402
from bench.export import distinct_weights, make_waves, time_paths, write_tokens  # noqa: E402
from bench.report import write_section  # noqa: E402
from icefall.data import make_fbank_extractor  # noqa: E402
from icefall.decode.search import greedy_search_batch  # noqa: E402
from icefall.decode.streaming import (  # noqa: E402
    FEATURE_RIGHT_CONTEXT,
    StreamingSearch,
    decode_one_chunk,
    get_init_states,
    streaming_search,
)
from icefall.export.onnx import encoder_metadata, export_transducer  # noqa: E402
from icefall.export.onnx_streaming import (  # noqa: E402
    export_streaming_encoder,
    streaming_encoder_metadata,
)
from icefall.zipformer import get_model  # noqa: E402

SR = 16000
CHUNK, LEFT = 16, 128
CONFIG = {"use_adapters": True, "adapter_dim": 16, "causal": True,
          "chunk_size": str(CHUNK), "left_context_frames": str(LEFT)}
TAIL = np.zeros(int(0.66 * SR), dtype=np.float32)


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-utts", type=int, default=4, help="Utterances per pass.")
    p.add_argument("--duration", type=float, default=8.0, help="Seconds per utterance.")
    p.add_argument("--repeats", type=int, default=3, help="Timed passes per path.")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every path.")
    p.add_argument("--write", type=int, default=1, help="1: write docs/benchmarks.md.")
    return p.parse_args()


def offline_one(model, feats: torch.Tensor) -> list[int]:
    """decode.py's path for one utterance: the full forward, then greedy search."""
    with torch.no_grad():
        enc, lens = model.forward_encoder(feats[None], torch.tensor([feats.shape[0]]))
        return greedy_search_batch(model, enc, lens)[0]


def streaming_one(model, feats: torch.Tensor) -> list[int]:
    """streaming_decode.py's path for one utterance (one stream)."""
    return streaming_search(model, [feats], num_decode_streams=1)[0]


def chunk_times(model, feats: list[torch.Tensor], chunk: int) -> list[float]:
    """Seconds of every decode_one_chunk call (batch 1) over the utterances."""
    search = StreamingSearch(model)
    left = model.encoder.streaming_left_context()
    times = []
    for f in feats:
        stream = search.new_stream(f, get_init_states(model, 1))
        while not stream.done:
            start = time.perf_counter()
            decode_one_chunk(model, [stream], chunk, left, search)
            times.append(time.perf_counter() - start)
    return times


def sherpa_offline(files, tokens: Path, threads: int):
    import sherpa_onnx

    rec = sherpa_onnx.OfflineRecognizer.from_transducer(
        *(str(f) for f in files), str(tokens), num_threads=threads,
        decoding_method="greedy_search")

    def decode(wave: np.ndarray) -> str:
        stream = rec.create_stream()
        stream.accept_waveform(SR, wave)
        rec.decode_stream(stream)
        return stream.result.text
    return decode


def sherpa_online(files, tokens: Path, threads: int):
    import sherpa_onnx

    rec = sherpa_onnx.OnlineRecognizer.from_transducer(
        str(tokens), *(str(f) for f in files), num_threads=threads,
        decoding_method="greedy_search")

    def decode(wave: np.ndarray) -> str:
        stream = rec.create_stream()
        stream.accept_waveform(SR, wave)
        stream.accept_waveform(SR, TAIL)
        stream.input_finished()
        while rec.is_ready(stream):
            rec.decode_stream(stream)
        return rec.get_result(stream)
    return decode


def export_both(model, out: Path) -> tuple[tuple, tuple, float]:
    """fp32 files of the non-streaming and the streaming export, and the seconds taken."""
    start = time.perf_counter()
    with torch.no_grad():
        off = export_transducer(model, out, "offline", encoder_metadata(CONFIG, model),
                                int8=False)
        on = export_transducer(model, out, "streaming",
                               streaming_encoder_metadata(CONFIG, model), int8=False,
                               encoder_export=export_streaming_encoder)
    return ((off.encoder, off.decoder, off.joiner), (on.encoder, on.decoder, on.joiner),
            time.perf_counter() - start)


def latency_rows(model, feats: list[torch.Tensor]) -> list[str]:
    rows = ["| chunk (frames after the frontend) | chunk duration | compute per chunk, "
            "median (p90) | compute / chunk duration | algorithmic latency, first / last "
            "frame of a chunk |", "|---|---|---|---|---|"]
    for chunk in (8, 16, 32):
        t = sorted(chunk_times(model, feats, chunk))
        med, p90 = statistics.median(t), t[int(0.9 * (len(t) - 1))]
        dur = 2 * chunk * 10
        look = FEATURE_RIGHT_CONTEXT * 10
        rows.append(f"| {chunk} | {dur} ms | {1000 * med:.1f} ms ({1000 * p90:.1f} ms) | "
                    f"{1000 * med / dur:.2f} | {dur + look} ms / {look} ms |")
    return rows


def main() -> None:
    args = get_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = distinct_weights(get_model(CONFIG)).eval()
    waves = make_waves(args.num_utts, args.duration)
    fbank = make_fbank_extractor()
    feats = [torch.as_tensor(np.asarray(fbank.extract(w, SR))) for w in waves]
    x = torch.stack(feats)
    rate = calibrate_blank(model, x, torch.full((x.shape[0],), x.shape[1]))
    audio = args.num_utts * args.duration
    with tempfile.TemporaryDirectory() as tmp:
        offline_files, online_files, export_s = export_both(model, Path(tmp))
        tokens = write_tokens(Path(tmp) / "tokens.txt", 500)
        off = sherpa_offline(offline_files, tokens, args.threads)
        on = sherpa_online(online_files, tokens, args.threads)
        # each path decodes one (features, samples) pair: PyTorch the features, sherpa-onnx
        # the samples
        paths = {"pytorch offline": lambda item: offline_one(model, item[0]),
                 "pytorch streaming": lambda item: streaming_one(model, item[0]),
                 "sherpa-onnx offline": lambda item: off(item[1]),
                 "sherpa-onnx online": lambda item: on(item[1])}
        times, outputs, other = time_paths(paths, list(zip(feats, waves)), args.repeats)
    latency = latency_rows(model, feats)
    same = sum(a == b for a, b in zip(outputs["pytorch offline"],
                                      outputs["pytorch streaming"]))
    rows = ["| path | RTF | vs its non-streaming path |", "|---|---|---|"]
    for name, t in times.items():
        ref = times[name.replace("streaming", "offline").replace("online", "offline")]
        rows.append(f"| {name} | {t / audio:.4f} | {t / ref:.2f}x |")
    ratio = times["pytorch streaming"] / times["pytorch offline"]
    body = "\n".join([
        f"Default Zipformer, causal (chunk {CHUNK}, left context {LEFT} frames), adapters "
        f"dim 16, random weights; {args.num_utts} utterances x {args.duration:g} s decoded "
        f"one at a time, greedy search, {args.threads} threads; minimum of {args.repeats} "
        f"alternating passes after a warm-up; tokens emitted on {100 * rate:.1f}% of "
        f"encoder frames; other processes used "
        f"{'?' if other is None else f'{100 * other:.0f}%'} of the machine's CPUs "
        f"meanwhile. The two fp32 exports took {export_s:.0f} s. The sherpa-onnx paths "
        "include feature extraction.", "",
        *rows, "",
        f"Target: PyTorch streaming at batch 1 within 1.5x of non-streaming decoding: "
        f"{ratio:.2f}x. Streaming and non-streaming PyTorch give the same tokens for "
        f"{same}/{args.num_utts} utterances (random weights emitting on every other frame "
        "flip tokens on the smallest numeric difference; the streaming forward's agreement "
        "with icefall's is tested against its golden outputs, test/test_streaming.py).", "",
        "Latency of a chunk (PyTorch, batch 1, the same utterances; compute includes the "
        "greedy search over the chunk):", "", *latency])
    print(body)
    if args.write:
        cmd = "python bench/streaming.py" + "".join(f" {a}" for a in sys.argv[1:])
        write_section("streaming", "Streaming: RTF and latency (CPU, bench/streaming.py)",
                      cmd, body)


if __name__ == "__main__":
    main()
