"""The data side of training and decoding: lhotse manifests, fbank features, the
DataLoader pipeline, BPE tokenizer, transcript normalisation and length filters.

Everything here is shared by the base and adapter recipes; see each module's docstring.
"""

from icefall.data.datamodule import (
    AsrDataModule,
    mux_cuts,
    parse_mux_weights,
)
from icefall.data.fbank import (
    STORAGE_TYPES,
    compute_fbank,
    compute_fbank_for_part,
    compute_fbank_for_parts,
    default_storage_type,
    fbank_executor,
    kaldifeat_available,
    make_fbank_extractor,
)
from icefall.data.filters import CutFilter, FilterStats, filter_cuts, zipformer_output_frames
from icefall.data.manifests import (
    ManifestError,
    check_manifest,
    cuts_filename,
    load_cuts,
    save_cuts,
)
from icefall.data.text import is_gigaspeech_garbage, normalize_cut_texts, normalize_text
from icefall.data.tokenizer import (
    decode,
    encode,
    encode_pieces,
    load_bpe_model,
    read_tokens,
    train_bpe_model,
    write_tokens,
)

__all__ = [
    "STORAGE_TYPES", "AsrDataModule", "CutFilter", "FilterStats", "ManifestError",
    "check_manifest", "compute_fbank", "compute_fbank_for_part", "compute_fbank_for_parts",
    "cuts_filename", "decode", "default_storage_type", "encode",
    "encode_pieces", "fbank_executor", "filter_cuts", "is_gigaspeech_garbage",
    "kaldifeat_available", "load_bpe_model", "load_cuts", "make_fbank_extractor",
    "mux_cuts", "normalize_cut_texts", "normalize_text", "parse_mux_weights", "read_tokens",
    "save_cuts", "train_bpe_model", "write_tokens",
    "zipformer_output_frames",
]
