#!/usr/bin/env bash
# Prepare the embedded two-domain corpus: synthesise speech with eSpeak NG, compute
# features, train the BPE model. Stages are skipped when their outputs exist.
#
# Usage (from egs/synth/ASR):
#   ./prepare.sh                              # the demo's corpus
#   ./prepare.sh --stage 1 --stop-stage 2     # only features and BPE
#   ./prepare.sh --num-utts-a 48 --num-utts-b 24 --num-dev 8 --num-test 8   # CI size
set -eou pipefail

stage=0
stop_stage=100
num_utts_a=3000      # domain A ("audiobooks") training utterances
num_utts_b=1000      # domain B ("podcasts") training utterances
num_dev=200          # dev and test utterances per domain
num_test=200
seed=42
vocab_size=200
num_mel_bins=80      # fbank bins (run.sh asks for its model's --feature-dim)
num_jobs=2
python=${PYTHON:-python3}

cd "$(dirname "$0")"
. ../../shared/parse_options.sh

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  log "Stage 0: synthesise domains A and B with eSpeak NG"
  if [ ! -f data/manifests/synth_summary.json ]; then
    $python local/synthesize.py --out-dir data --num-utts-a "$num_utts_a" \
      --num-utts-b "$num_utts_b" --num-dev "$num_dev" --num-test "$num_test" \
      --seed "$seed" --num-jobs "$num_jobs"
  fi
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "Stage 1: compute fbank features"
  # Exact (uncompressed) features: run.sh compares decoding from these with sherpa-onnx,
  # which computes its own from the audio; lilcom's steps of 1/64 would flip a few words.
  $python local/compute_fbank_synth.py --manifest-dir data/manifests \
    --output-dir data/fbank --num-jobs "$num_jobs" --storage numpy_files \
    --num-mel-bins "$num_mel_bins"
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "Stage 2: train the BPE model (data/lang_bpe_$vocab_size)"
  if [ ! -f "data/lang_bpe_$vocab_size/bpe.model" ]; then
    $python local/train_bpe_model.py --lang-dir "data/lang_bpe_$vocab_size" \
      --vocab-size "$vocab_size"
  fi
fi
