"""Model, adapter and checkpoint-choice flags, shared by train, decode and export.

Names and defaults are icefall's (egs/librispeech/ASR/zipformer_adapter), so recipes and
checkpoints move between the two toolkits unchanged; the defaults come from
:data:`icefall.zipformer.MODEL_DEFAULTS`, which checkpoints store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from icefall.cli.flags import nonnegative_int, positive_int, str2bool
from icefall.zipformer.build import MODEL_DEFAULTS, PER_STACK_FLAGS


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The Zipformer model flags (icefall names and defaults), plus --context-size."""
    d = MODEL_DEFAULTS
    for flag in PER_STACK_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", type=str, default=d[flag],
                            help="Comma-separated, one value per encoder stack (or one for all).")
    parser.add_argument("--pos-dim", type=positive_int, default=d["pos_dim"],
                        help="Positional-encoding embedding dimension.")
    parser.add_argument("--decoder-dim", type=positive_int, default=d["decoder_dim"],
                        help="Embedding dimension of the decoder (prediction network).")
    parser.add_argument("--joiner-dim", type=positive_int, default=d["joiner_dim"],
                        help="Dimension the joiner projects encoder and decoder outputs to.")
    parser.add_argument("--causal", type=str2bool, default=d["causal"],
                        help="1 for a chunk-causal (streaming-capable) model.")
    parser.add_argument("--chunk-size", type=str, default=d["chunk_size"],
                        help="Chunk sizes (frames after the frontend) drawn in training; "
                             "the first is used in eval. -1 means full attention.")
    parser.add_argument("--left-context-frames", type=str, default=d["left_context_frames"],
                        help="Left-context lengths (frames) drawn in training, per chunk size.")
    parser.add_argument("--use-transducer", type=str2bool, default=d["use_transducer"],
                        help="1 to use the transducer head.")
    parser.add_argument("--use-ctc", type=str2bool, default=d["use_ctc"],
                        help="1 to add a CTC head.")
    parser.add_argument("--context-size", type=positive_int, default=d["context_size"],
                        help="Decoder context: 1 is bigram, 2 is trigram.")


def add_adapter_arguments(parser: argparse.ArgumentParser,
                          use_adapters_default: bool = True) -> None:
    """--use-adapters and --adapter-dim (the zipformer_adapter recipe's flags)."""
    parser.add_argument("--use-adapters", type=str2bool, default=use_adapters_default,
                        help="1 to insert residual adapters into every encoder layer (and "
                             "use them); 0 runs the base model, even from an adapter "
                             "checkpoint.")
    parser.add_argument("--adapter-dim", type=positive_int, default=MODEL_DEFAULTS["adapter_dim"],
                        help="Bottleneck dimension of each adapter.")


def add_checkpoint_arguments(parser: argparse.ArgumentParser, exp_dir: str,
                             epoch: int = 30, avg: int = 15) -> None:
    """--epoch --iter --avg --use-averaged-model --exp-dir --trust-checkpoint."""
    a = parser.add_argument
    a("--epoch", type=positive_int, default=epoch,
      help="Decode with epoch-EPOCH.pt (averaged with earlier epochs, see --avg).")
    a("--iter", type=nonnegative_int, default=0,
      help="If positive, use checkpoint-*.pt files up to this batch instead of --epoch.")
    a("--avg", type=positive_int, default=avg, help="Number of checkpoints to average.")
    a("--use-averaged-model", type=str2bool, default=True,
      help="Average over every batch between two checkpoints --avg apart, using their "
           "running averages (model_avg).")
    a("--exp-dir", type=Path, default=Path(exp_dir), help="The experiment folder.")
    a("--trust-checkpoint", type=str2bool, default=False,
      help="Allow checkpoints that need full unpickling (only for files you trust).")


class _Unset:
    """Marks a flag the command line did not give."""


def given_flags(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> list[str]:
    """The destinations (``encoder_dim`` ...) of the flags given on the command line
    (``argv``, default ``sys.argv[1:]``), so that values stored in a checkpoint can fill
    the others: the arguments are parsed once more into a namespace where every flag is
    pre-set to a marker, which only given flags replace."""
    unset = _Unset()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions
                                      if a.dest != argparse.SUPPRESS})
    parser.parse_args(argv, namespace=namespace)
    return sorted(k for k, v in vars(namespace).items() if v is not unset)


def parse_with_given_flags(parser: argparse.ArgumentParser, argv: list[str] | None = None
                           ) -> dict:
    """The parsed flags as a dict, with ``given_flags`` (see :func:`given_flags`): the
    model flags not given are then taken from the checkpoint."""
    return {**vars(parser.parse_args(argv)), "given_flags": given_flags(parser, argv)}
