#!/usr/bin/env bash
# Data preparation for the LibriSpeech zipformer recipes and GigaSpeech adapter fine-tuning.
#
# Usage:
#
#   cd egs/librispeech/ASR
#   ./prepare.sh                                # every stage, corpora in ./download
#   ./prepare.sh --dl-dir /corpora              # corpora already on disk (works offline)
#   ./prepare.sh --stage 3 --stop-stage 5 --num-jobs 8
#
# Options (defaults in brackets):
#   --stage N              first stage to run [0]
#   --stop-stage M         last stage to run [8]
#   --dl-dir DIR           corpora: DIR/LibriSpeech/<part>/, DIR/musan/, DIR/GigaSpeech/
#                          (GigaSpeech.json + audio/), DIR/password for GigaSpeech [$PWD/download]
#   --num-jobs N           parallel jobs for manifests and fbank (--nj works too) [4]
#   --vocab-sizes "N ..."  BPE vocabulary sizes, one data/lang_bpe_N each [500]
#   --perturb-speed BOOL   0.9x/1.1x speed copies of the LibriSpeech training parts [true]
#   --librispeech-parts P  parts to download in stage 0, space-separated, or all [all]
#   --gigaspeech-subsets S GigaSpeech subsets [S DEV TEST]
#   --seed N               seed of the train-all-shuf shuffle [42]
#   -h, --help             show this text
#   The Python scripts run with $PYTHON [python3].
#
# Stages and what they write (all under ./data; a stage whose outputs exist is skipped,
# so an interrupted run resumes where it stopped):
#   0  download what is missing: LibriSpeech, MUSAN, GigaSpeech (needs DIR/password);
#      what is already in --dl-dir is kept, so no network is needed when it is all there
#   1  LibriSpeech manifests   data/manifests/librispeech_{recordings,supervisions}_<part>.jsonl.gz
#   2  MUSAN manifests         data/manifests/musan_recordings_{music,speech,noise}.jsonl.gz
#   3  LibriSpeech fbank       data/fbank/librispeech_cuts_<part>.jsonl.gz and
#                              data/fbank/librispeech_cuts_train-all-shuf.jsonl.gz
#   4  MUSAN fbank             data/fbank/musan_cuts.jsonl.gz
#   5  BPE                     data/lang_bpe_<N>/{transcript_words.txt,bpe.model,tokens.txt}
#   6  GigaSpeech manifests    data/manifests/gigaspeech_{recordings,supervisions,cuts}_<S>.jsonl.gz
#   7  GigaSpeech fbank        data/fbank/gigaspeech_cuts_{S,DEV,TEST}.jsonl.gz
#   8  validate every data/fbank/*_cuts_*.jsonl.gz (features, durations, supervisions, text)
# MUSAN and GigaSpeech are optional: their stages are skipped (logged) when the corpus is
# not in --dl-dir. Features are 80-bin Kaldi-compatible fbank (lhotse; kaldifeat if installed).

set -eou pipefail

stage=0
stop_stage=8
dl_dir=$PWD/download
nj=4
vocab_sizes="500"
perturb_speed=true
librispeech_parts=all
gigaspeech_subsets="S DEV TEST"
seed=42
python=${PYTHON:-python3}
local_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/local

log() {
  # Timestamp, script:line and the message, as icefall's recipes log.
  local where="${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}"
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') ($where) $*"
}

die() {
  echo "prepare.sh: error: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --stage|--stop-stage|--dl-dir|--num-jobs|--nj|--vocab-sizes|--perturb-speed|\
    --librispeech-parts|--gigaspeech-subsets|--seed)
      [ $# -ge 2 ] || die "option $1 needs a value"
      case "$1" in
        --stage) stage=$2 ;;
        --stop-stage) stop_stage=$2 ;;
        --dl-dir) dl_dir=$2 ;;
        --num-jobs|--nj) nj=$2 ;;
        --vocab-sizes) vocab_sizes=$2 ;;
        --perturb-speed) perturb_speed=$2 ;;
        --librispeech-parts) librispeech_parts=$2 ;;
        --gigaspeech-subsets) gigaspeech_subsets=$2 ;;
        --seed) seed=$2 ;;
      esac
      shift 2 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

for n in "$stage" "$stop_stage" "$nj" "$seed"; do
  [[ "$n" =~ ^-?[0-9]+$ ]] || die "expected an integer, got '$n'"
done
for n in $vocab_sizes; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "--vocab-sizes: expected integers, got '$n'"
done

run_stage() {
  # True when stage $1 lies within --stage .. --stop-stage.
  [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]
}

mkdir -p data
log "dl_dir: $dl_dir, stages $stage..$stop_stage, $nj jobs"

if run_stage 0; then
  log "Stage 0: Download data (what is missing from $dl_dir)"
  mkdir -p "$dl_dir"
  "$python" "$local_dir/download_data.py" --dl-dir "$dl_dir" \
    --librispeech-parts "$librispeech_parts" --gigaspeech-subsets "$gigaspeech_subsets"
fi

if run_stage 1; then
  log "Stage 1: Prepare LibriSpeech manifests"
  if [ -f data/manifests/.librispeech.done ]; then
    log "data/manifests/.librispeech.done exists: skipping"
  else
    [ -d "$dl_dir/LibriSpeech" ] ||
      die "LibriSpeech not found: $dl_dir/LibriSpeech (run stage 0, or pass --dl-dir DIR with DIR/LibriSpeech/<part>/)"
    mkdir -p data/manifests
    "$python" "$local_dir/prepare_manifests.py" --dataset librispeech \
      --corpus-dir "$dl_dir/LibriSpeech" --output-dir data/manifests --num-jobs "$nj"
    touch data/manifests/.librispeech.done
  fi
fi

if run_stage 2; then
  log "Stage 2: Prepare MUSAN manifests"
  if [ -f data/manifests/.musan.done ]; then
    log "data/manifests/.musan.done exists: skipping"
  elif [ ! -d "$dl_dir/musan" ]; then
    log "MUSAN not found in $dl_dir/musan: skipping (train with --enable-musan 0)"
  else
    mkdir -p data/manifests
    "$python" "$local_dir/prepare_manifests.py" --dataset musan \
      --corpus-dir "$dl_dir/musan" --output-dir data/manifests
    touch data/manifests/.musan.done
  fi
fi

if run_stage 3; then
  log "Stage 3: Compute fbank for LibriSpeech"
  if [ -f data/fbank/.librispeech.done ]; then
    log "data/fbank/.librispeech.done exists: skipping"
  else
    [ -f data/manifests/.librispeech.done ] ||
      die "LibriSpeech manifests not prepared: run stage 1 first"
    mkdir -p data/fbank
    "$python" "$local_dir/compute_fbank_librispeech.py" --manifest-dir data/manifests \
      --output-dir data/fbank --num-jobs "$nj" --perturb-speed "$perturb_speed" --seed "$seed"
    touch data/fbank/.librispeech.done
  fi
fi

if run_stage 4; then
  log "Stage 4: Compute fbank for MUSAN"
  if [ -f data/fbank/musan_cuts.jsonl.gz ]; then
    log "data/fbank/musan_cuts.jsonl.gz exists: skipping"
  elif [ ! -f data/manifests/.musan.done ]; then
    log "no MUSAN manifests: skipping"
  else
    mkdir -p data/fbank
    "$python" "$local_dir/compute_fbank_musan.py" --manifest-dir data/manifests \
      --output-dir data/fbank --num-jobs "$nj"
  fi
fi

if run_stage 5; then
  log "Stage 5: Prepare BPE based lang"
  for vocab_size in $vocab_sizes; do
    lang_dir=data/lang_bpe_${vocab_size}
    if [ -f "$lang_dir/bpe.model" ] && [ -f "$lang_dir/tokens.txt" ]; then
      log "$lang_dir/bpe.model exists: skipping"
      continue
    fi
    mkdir -p "$lang_dir"
    "$python" "$local_dir/train_bpe_model.py" --lang-dir "$lang_dir" \
      --vocab-size "$vocab_size" --manifest-dir data/manifests
  done
fi

if run_stage 6; then
  log "Stage 6: Prepare GigaSpeech manifests ($gigaspeech_subsets)"
  if [ -f data/manifests/.gigaspeech.done ]; then
    log "data/manifests/.gigaspeech.done exists: skipping"
  elif [ ! -f "$dl_dir/GigaSpeech/GigaSpeech.json" ]; then
    log "GigaSpeech not found ($dl_dir/GigaSpeech/GigaSpeech.json): skipping"
  else
    mkdir -p data/manifests
    "$python" "$local_dir/prepare_manifests.py" --dataset gigaspeech \
      --corpus-dir "$dl_dir/GigaSpeech" --output-dir data/manifests \
      --subsets "$gigaspeech_subsets" --num-jobs "$nj"
    touch data/manifests/.gigaspeech.done
  fi
fi

if run_stage 7; then
  log "Stage 7: Compute fbank for GigaSpeech ($gigaspeech_subsets)"
  if [ -f data/fbank/.gigaspeech.done ]; then
    log "data/fbank/.gigaspeech.done exists: skipping"
  elif [ ! -f data/manifests/.gigaspeech.done ]; then
    log "no GigaSpeech manifests: skipping"
  else
    mkdir -p data/fbank
    "$python" "$local_dir/compute_fbank_gigaspeech.py" --manifest-dir data/manifests \
      --output-dir data/fbank --subsets "$gigaspeech_subsets" --num-jobs "$nj"
    touch data/fbank/.gigaspeech.done
  fi
fi

if run_stage 8; then
  log "Stage 8: Validate the cut manifests in data/fbank"
  manifests=()
  for m in data/fbank/*_cuts_*.jsonl.gz data/fbank/musan_cuts.jsonl.gz; do
    # train-all-shuf holds the same cuts as the training parts.
    if [ -f "$m" ] && [[ "$m" != *_cuts_train-all-shuf.jsonl.gz ]]; then
      manifests+=("$m")
    fi
  done
  [ ${#manifests[@]} -gt 0 ] || die "no cut manifest in data/fbank to validate (run stage 3)"
  "$python" "$local_dir/validate_manifest.py" "${manifests[@]}"
fi

log "Done: stages $stage..$stop_stage"
