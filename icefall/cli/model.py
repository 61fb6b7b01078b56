"""Model, adapter and checkpoint-choice flags, shared by train, decode and export.

Names and defaults are icefall's (egs/librispeech/ASR/zipformer_adapter), so recipes and
checkpoints move between the two toolkits unchanged; the defaults come from
:data:`icefall.zipformer.MODEL_DEFAULTS`, which checkpoints store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from icefall.cli.flags import nonnegative_int, positive_int, str2bool
from icefall.zipformer.adapter_kinds import adapter_kinds
from icefall.zipformer.build import MODEL_DEFAULTS, PER_STACK_FLAGS
from icefall.zipformer.placement import PRESETS, check_adapter_name


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
    parser.add_argument("--feature-dim", type=positive_int, default=d["feature_dim"],
                        help="Input feature dimension: the mel bins of the fbank features "
                             "(80 in icefall's recipes; decoding reads it from the checkpoint).")


def add_adapter_arguments(parser: argparse.ArgumentParser, use_adapters_default: bool = True,
                          use_lora_default: bool = False, inference: bool = False) -> None:
    """--use-adapters --adapter-dim (zipformer_adapter's) and --use-lora --lora-r
    (zipformer_lora's); for training also --adapter-kind --adapter-targets --adapter-name,
    for decoding, export and transcription --adapter-name --adapter-file --base-checkpoint.

    With ``inference``, --use-adapters and --use-lora default to None: see
    :func:`resolve_adapter_switches`.
    """
    a = parser.add_argument
    a("--use-adapters", type=str2bool, default=None if inference else use_adapters_default,
      help="1 to use adapters (training: add them, --adapter-kind at --adapter-targets); "
           "0 runs the base model, even from an adapter checkpoint. "
           f"Default: {int(use_adapters_default)}"
           + (", or 1 with --adapter-file/--adapter-name." if inference else "."))
    a("--adapter-dim", type=positive_int, default=MODEL_DEFAULTS["adapter_dim"],
      help="Bottleneck dimension of each adapter (decoding reads it from the checkpoint).")
    a("--use-lora", type=str2bool, default=None if inference else use_lora_default,
      help="1 for LoRA as icefall's zipformer_lora (rank --lora-r); 0 runs the base model, "
           f"even from a LoRA checkpoint. Default: {int(use_lora_default)}.")
    a("--lora-r", type=nonnegative_int, default=MODEL_DEFAULTS["lora_r"],
      help="LoRA rank (icefall: 0 means no LoRA; decoding reads it from the checkpoint).")
    if inference:
        add_adapter_choice_arguments(parser)
    else:
        add_adapter_training_arguments(parser)


def add_adapter_training_arguments(parser: argparse.ArgumentParser) -> None:
    """--adapter-kind, --adapter-targets, --adapter-name of a training run."""
    a = parser.add_argument
    a("--adapter-kind", type=str, default=MODEL_DEFAULTS["adapter_kind"],
      choices=adapter_kinds(),
      help="With --use-adapters 1: the registered adapter kind (residual: the bottleneck of "
           "zipformer_adapter; lora: as --use-lora 1 with rank --adapter-dim).")
    a("--adapter-targets", type=str, default=MODEL_DEFAULTS["adapter_targets"],
      help="Where adapters go: comma-separated presets (" + ", ".join(PRESETS) + ") and "
           "fnmatch patterns over module names, e.g. 'encoder,joiner' or "
           "'encoder.encoders.3.*,decoder'.")
    a("--adapter-name", type=check_name, default=MODEL_DEFAULTS["adapter_name"],
      help="The adapter's name: decoding, export and transcription choose adapters by it; "
           "export-adapter.py writes adapter-<name>.pt.")


def add_adapter_choice_arguments(parser: argparse.ArgumentParser) -> None:
    """--adapter-name, --adapter-file, --base-checkpoint of decoding, export, transcription."""
    a = parser.add_argument
    a("--adapter-name", type=check_name, default=None,
      help="Use the adapter of this name (of the checkpoint's and the --adapter-file ones); "
           "needed when there are several.")
    a("--adapter-file", type=Path, action="append", default=None,
      help="An adapter-<name>.pt (or an adapter-only checkpoint) to use on top of the base "
           "checkpoint; repeat for several. It must have been trained on this base.")
    a("--base-checkpoint", type=Path, default=None,
      help="The base model of adapter-only checkpoints, when it is no longer where they "
           "say it is.")


def check_name(value: str) -> str:
    """argparse type of --adapter-name."""
    try:
        return check_adapter_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--adapter-name ", "")) from None


def resolve_adapter_switches(args: argparse.Namespace, use_adapters_default: bool,
                             use_lora_default: bool = False) -> argparse.Namespace:
    """Fills --use-adapters/--use-lora left unset on an inference parser: the recipe's
    defaults, or adapters on when --adapter-file or --adapter-name is given and neither
    switch was."""
    unset = args.use_adapters is None and args.use_lora is None
    if args.use_adapters is None:
        args.use_adapters = use_adapters_default
    if args.use_lora is None:
        args.use_lora = use_lora_default
    if unset and (args.adapter_file or args.adapter_name):
        args.use_adapters = True
    return args


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
    # actions that add to what is there (append, extend, count) start from None instead
    accumulating = {a.dest for a in parser._actions
                    if isinstance(a, (argparse._AppendAction, argparse._AppendConstAction,
                                      argparse._CountAction))}
    namespace = argparse.Namespace(**{a.dest: None if a.dest in accumulating else unset
                                      for a in parser._actions
                                      if a.dest != argparse.SUPPRESS})
    parser.parse_args(argv, namespace=namespace)
    return sorted(k for k, v in vars(namespace).items()
                  if v is not unset and not (k in accumulating and v is None))


def parse_with_given_flags(parser: argparse.ArgumentParser, argv: list[str] | None = None
                           ) -> dict:
    """The parsed flags as a dict, with ``given_flags`` (see :func:`given_flags`): the
    model flags not given are then taken from the checkpoint."""
    return {**vars(parser.parse_args(argv)), "given_flags": given_flags(parser, argv)}
