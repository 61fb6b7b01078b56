#!/usr/bin/env python3
"""Real-time factor of PyTorch vs ONNX Runtime (fp32, int8) greedy decoding on the CPU.

Usage:
  python bench/export.py                       # default 65.5M model + adapters, 2 threads
  python bench/export.py --num-utts 2 --duration 4 --repeats 1 --write 0   # quick look

The model is ``get_model({"use_adapters": True, "adapter_dim": 16})`` (icefall's default
Zipformer, 65.5M parameters plus 761,344 adapter parameters baked into the encoder) with
random weights and a 500-token vocabulary, exported by ``icefall.export.onnx`` exactly as
``export-onnx.py`` exports a checkpoint (fp32 and dynamic-quantisation int8).

Each path transcribes the same utterances one by one (batch 1, as a deployment decodes a
file), from samples to token ids, with 2 threads:

- pytorch: lhotse fbank (the training features), ``forward_encoder``, ``greedy_search_batch``
  (what ``pretrained.py`` runs);
- onnx fp32 / onnx int8: kaldi-native-fbank, ONNX Runtime, numpy greedy search (what
  ``onnx_pretrained.py`` runs);
- sherpa-onnx fp32 / int8 (when the package imports): ``OfflineRecognizer.from_transducer``
  on the same files, greedy search.

RTF = decoding time / audio duration; the minimum over ``--repeats`` alternating passes
(the machine is shared) after one warm-up pass. Writes the "export" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loss import OtherLoad  # noqa: E402
from bench.report import write_section  # noqa: E402
from icefall.data import make_fbank_extractor  # noqa: E402
from icefall.decode import onnx_runtime as rt  # noqa: E402
from icefall.decode.search import greedy_search_batch  # noqa: E402
from icefall.export.onnx import ExportedFiles, encoder_metadata, export_transducer  # noqa: E402
from icefall.zipformer import count_parameters, get_model  # noqa: E402

SR = 16000
Decoder = Callable[[np.ndarray], list[int] | str]


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-utts", type=int, default=4, help="Utterances per pass.")
    p.add_argument("--duration", type=float, default=8.0, help="Seconds per utterance.")
    p.add_argument("--repeats", type=int, default=3, help="Timed passes per path.")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every path.")
    p.add_argument("--write", type=int, default=1, help="1: write docs/benchmarks.md.")
    return p.parse_args()


def make_waves(num: int, seconds: float) -> list[np.ndarray]:
    """Seeded test audio: gliding tones in noise, amplitude-modulated."""
    rng, t = np.random.default_rng(0), np.arange(int(SR * seconds)) / SR
    waves = []
    for _ in range(num):
        w = 0.03 * rng.standard_normal(t.size)
        for f0, f1 in rng.uniform(100, 4000, (3, 2)):
            w += 0.1 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / (2 * seconds)) * t)
        waves.append((w * (0.6 + 0.4 * np.sin(2 * np.pi * 1.7 * t))).astype(np.float32))
    return waves


def distinct_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Perturbs every parameter by 10% of its spread (seeded). Fresh layers of a stack are
    deep copies with equal weights, which the exporter would store once (it deduplicates
    equal initializers); zero-initialised adapter outputs become small random ones."""
    with torch.no_grad():
        for p in model.parameters():
            spread = float(p.std()) if p.numel() > 1 else 0.0
            p.add_(torch.randn_like(p) * (0.1 * spread if spread > 0 else 0.01))
    return model


def write_tokens(path: Path, vocab_size: int) -> Path:
    lines = ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    lines += [f"\u2581W{i} {i}" for i in range(3, vocab_size)]
    path.write_text("\n".join(lines) + "\n")
    return path


def pytorch_decoder(model: torch.nn.Module) -> Decoder:
    fbank = make_fbank_extractor()

    def decode(wave: np.ndarray) -> list[int]:
        feats = torch.as_tensor(np.asarray(fbank.extract(wave, SR)))[None]
        with torch.no_grad():
            enc, lens = model.forward_encoder(feats, torch.tensor([feats.shape[1]]))
            return greedy_search_batch(model, enc, lens)[0]
    return decode


def onnx_decoder(files: tuple[Path, Path, Path], threads: int) -> Decoder:
    model = rt.OnnxTransducer(*files, num_threads=threads)

    def decode(wave: np.ndarray) -> list[int]:
        x, x_lens = rt.pad_features([rt.compute_features(wave, SR)])
        enc, lens = model.run_encoder(x, x_lens)
        return rt.greedy_search(model, enc, lens)[0]
    return decode


def sherpa_decoder(files: tuple[Path, Path, Path], tokens: Path, threads: int) -> Decoder:
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


def time_paths(paths: dict[str, Callable[[Any], Any]], waves: list, repeats: int
               ) -> tuple[dict[str, float], dict[str, list], float | None]:
    """Minimum seconds per pass of each path (alternating passes; a pass decodes every item
    of ``waves`` one at a time), its outputs, and the share of the CPUs other processes used
    during the timed passes."""
    outputs = {name: [dec(w) for w in waves] for name, dec in paths.items()}  # warm-up
    best = {name: float("inf") for name in paths}
    load = OtherLoad()
    for _ in range(repeats):
        for name, dec in paths.items():
            start = time.perf_counter()
            for w in waves:
                dec(w)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, outputs, load.share()


def export(model: torch.nn.Module, out: Path) -> tuple[ExportedFiles, float]:
    params = {"adapter_dim": 16, "causal": False}
    start = time.perf_counter()
    with torch.no_grad():
        files = export_transducer(model, out, "bench", encoder_metadata(params, model))
    return files, time.perf_counter() - start


def mb(path: Path) -> float:
    return path.stat().st_size / 2 ** 20


def report(args, model, files, export_s, times, outputs, audio_s, other,
           token_table: list[str]) -> str:
    count = count_parameters(model)
    rows = ["| path | RTF | time per pass (s) | vs pytorch |", "|---|---|---|---|"]
    for name, t in times.items():
        rows.append(f"| {name} | {t / audio_s:.4f} | {t:.2f} | {t / times['pytorch']:.2f}x |")
    sizes = ["| model | fp32 (MB) | int8 (MB) | int8 / fp32 |", "|---|---|---|---|"]
    for part in ("encoder", "decoder", "joiner"):
        a, b = mb(getattr(files, part)), mb(getattr(files, f"{part}_int8"))
        sizes.append(f"| {part} | {a:.1f} | {b:.1f} | {b / a:.3f} |")
    same = sum(a == b for a, b in zip(outputs["pytorch"], outputs["onnx fp32"]))
    emitted = sum(len(h) for h in outputs["pytorch"])
    frames = round(audio_s * 25)  # encoder frames: 4x subsampling of 100 frames/s
    sherpa = ""
    if "sherpa-onnx fp32" in outputs:
        tokens = [rt.tokens_to_text(h, token_table) for h in outputs["onnx fp32"]]
        agree = sum(a == b for a, b in zip(tokens, outputs["sherpa-onnx fp32"]))
        sherpa = f" sherpa-onnx fp32 gives the ONNX Runtime fp32 text for {agree}/{len(tokens)}."
    ratio_fp32 = times["onnx fp32"] / times["pytorch"]
    ratio_size = mb(files.encoder_int8) / mb(files.encoder)
    return "\n".join([
        f"Default Zipformer ({count.total:,} parameters incl. 761,344 adapter parameters "
        f"baked in, random weights, vocab 500); {args.num_utts} utterances x "
        f"{args.duration:g} s decoded one at a time from samples (features included), "
        f"greedy search, {args.threads} threads; minimum of {args.repeats} alternating "
        f"passes after a warm-up; other processes used "
        f"{'?' if other is None else f'{100 * other:.0f}%'} of the machine's CPUs "
        f"meanwhile. Export (fp32 + int8) took {export_s:.0f} s. The random model emits "
        f"{emitted} tokens on about {frames} encoder frames, so the decoder runs far more "
        "often than on real speech.", "",
        *rows, "", *sizes, "",
        f"ONNX fp32 / PyTorch time: {ratio_fp32:.2f}x (target <= 0.8x); int8 / fp32 "
        f"encoder file: {ratio_size:.3f}x (target <= 0.3x). PyTorch and ONNX fp32 emit the "
        f"same tokens for {same}/{len(outputs['pytorch'])} utterances.{sherpa}",
        "Published reference for this model in sherpa-onnx on 2 threads (another machine): "
        "RTF 0.046 fp32, 0.039 int8."])


def main() -> None:
    args = get_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = distinct_weights(get_model({"use_adapters": True, "adapter_dim": 16})).eval()
    waves = make_waves(args.num_utts, args.duration)
    with tempfile.TemporaryDirectory() as tmp:
        files, export_s = export(model, Path(tmp))
        tokens = write_tokens(Path(tmp) / "tokens.txt", 500)
        fp32 = (files.encoder, files.decoder, files.joiner)
        int8 = (files.encoder_int8, files.decoder_int8, files.joiner_int8)
        paths: dict[str, Decoder] = {"pytorch": pytorch_decoder(model),
                                     "onnx fp32": onnx_decoder(fp32, args.threads),
                                     "onnx int8": onnx_decoder(int8, args.threads)}
        try:
            paths["sherpa-onnx fp32"] = sherpa_decoder(fp32, tokens, args.threads)
            paths["sherpa-onnx int8"] = sherpa_decoder(int8, tokens, args.threads)
        except ImportError:
            pass
        times, outputs, other = time_paths(paths, waves, args.repeats)
        body = report(args, model, files, export_s, times, outputs,
                      args.num_utts * args.duration, other, rt.read_token_table(tokens))
    print(body)
    if args.write:
        write_section("export", "Deployment: PyTorch vs ONNX Runtime vs sherpa-onnx (CPU, "
                      "bench/export.py)", "python bench/export.py", body)


if __name__ == "__main__":
    main()
