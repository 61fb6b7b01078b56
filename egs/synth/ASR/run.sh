#!/usr/bin/env bash
# The whole story on the embedded two-domain corpus, with the real recipe scripts of
# egs/librispeech/ASR: base model on domain A, domain shift to B, adapters on B, adapters
# off on A, full fine-tuning for comparison, ONNX export and its decoding with ONNX
# Runtime (fp32, int8) and sherpa-onnx, then the WER table and exp/report.{md,json},
# exp/wer.png. Stages whose outputs exist are skipped, so an interrupted run resumes.
# With --extra-systems 1 (about 8 more minutes on 2 cores), also LoRA (zipformer_lora),
# adapters in the decoder and joiner too, and context biasing towards B's own words.
# With --streaming 1 (about 10 more minutes), also a causal base model with adapters,
# decoded chunk by chunk by streaming_decode.py (stages 16-18).
#
# Usage (from anywhere; `make demo` runs it with the project's virtual environment):
#   egs/synth/ASR/run.sh
#   egs/synth/ASR/run.sh --stage 5                   # from the full fine-tuning stage on
#   egs/synth/ASR/run.sh --extra-systems 1           # and the extra systems (stages 10-14)
#   egs/synth/ASR/run.sh --streaming 1               # and the streaming systems (16-18)
#   egs/synth/ASR/run.sh --num-utts-a 48 --num-utts-b 32 --num-buckets 2 ...  # CI size
#     (test/test_demo.py runs that in a copy of this directory)
set -eou pipefail

stage=0
stop_stage=100
exp_dir=exp
# corpus (prepare.sh)
num_utts_a=3000
num_utts_b=1000
num_dev=200
num_test=200
vocab_size=200
num_jobs=2
# model (icefall flags; a two-stack Zipformer of 1.9M parameters, with a CTC head). One
# layer per stack (1.1M) ran the demo faster but missed targets of the extra systems
# (docs/benchmarks.md, "A smaller demo model")
model_flags="--num-encoder-layers 2,2 --downsampling-factor 1,2 --encoder-dim 96,128
  --feedforward-dim 256,384 --num-heads 4,4 --encoder-unmasked-dim 64,96
  --cnn-module-kernel 15,15 --query-head-dim 16 --value-head-dim 8 --pos-dim 32
  --decoder-dim 128 --joiner-dim 128 --use-ctc 1"
adapter_dim=16
# 24 mel bins (icefall's recipes take 80): on a CPU the convolutional frontend is most of
# a training step at 80 bins; at 24 its convolutions see 5 frequency positions after
# subsampling (9 at 40 bins), and the demo's stages take 0.70-0.94x the time of 40 bins
# on the two machines measured (docs/benchmarks.md)
feature_dim=24
# training: schedules scaled to runs of a few hundred batches; small batches, and the
# CTC loss and the simple loss's acoustic term, take the model off the LM-only plateau
base_epochs=4
finetune_epochs=3    # full fine-tuning
adapter_epochs=6     # adapters and LoRA (at 4, one seed of three recovers < 60%)
base_lr=0.05         # base model and full fine-tuning
adapter_lr=0.1       # adapters (zero-initialised, updates floored by --adapter-min-rms)
max_duration=15      # seconds of audio per training batch
num_buckets=10       # duration buckets of the training sampler
decode_max_duration=100
seed=42              # training's random seed (the corpus stays the same: see prepare.sh)
train_flags="--lr-batches 500 --lr-epochs 10 --lr-warmup-batches 50 --ref-duration 0.25
  --warm-step 100 --ctc-loss-scale 0.5 --am-scale 0.2 --enable-spec-aug 0
  --enable-musan 0 --num-workers 0 --tensorboard 0 --log-interval 20
  --valid-interval 100000 --save-every-n 100000"
# extra systems (--extra-systems 1): LoRA of rank lora_r on lora_targets (the linear
# layers of the encoder stacks' feed-forward, convolution and non-linear attention modules,
# the decoder's and the joiner's: 1.92% of the parameters; icefall's zipformer_lora sites,
# --adapter-targets encoder, at rank 3 recover less: docs/benchmarks.md), trained at
# lora_lr with lora_B's updates floored at lora_min_rms (icefall's 1e-5 leaves a
# zero-initialised lora_B almost still in a run of a few hundred batches), adapters
# of width dj_adapter_dim at the encoder, decoder and joiner trained for dj_epochs (at
# 6 or 9 epochs they learn fewer of the B-only words than full fine-tuning does:
# docs/benchmarks.md), and modified beam search biased towards the B-only words
# (--context-file) with bonus context_score per BPE piece
extra_systems=0
lora_r=2
lora_targets="encoder.encoders.*feed_forward*,encoder.encoders.*conv_module*"
lora_targets+=",encoder.encoders.*nonlin_attention*,joiner.*,decoder.*"
lora_lr=0.05
lora_min_rms=0.01
dj_adapter_dim=32
dj_epochs=12
context_score=2.0
# streaming systems (--streaming 1): a causal base trained with icefall's chunk lists,
# adapters on it, both decoded chunk by chunk with stream_chunk frames (50 Hz) and
# stream_left_context frames of left context
streaming=0
causal_flags="--causal 1 --chunk-size 16,32,64,-1 --left-context-frames 64,128,256,-1"
stream_chunk=16
stream_left_context=128
python=${PYTHON:-python3}

cd "$(dirname "$0")"
. ../../shared/parse_options.sh
model_flags="$model_flags --feature-dim $feature_dim"
. ../../shared/stages.sh  # log, run_stage, fresh_tmp, publish
recipes=../../librispeech/ASR
bpe=data/lang_bpe_$vocab_size/bpe.model
data_flags="--manifest-dir data/fbank --bpe-model $bpe"
# A training stage whose output is missing starts again from scratch (--overwrite 1 removes
# what an interrupted attempt left in its exp-dir).
train_data_flags="--max-duration $max_duration --num-buckets $num_buckets --seed $seed
  --overwrite 1"
mkdir -p "$exp_dir"

# decode NAME SCRIPT EXP TEST_SETS EXTRA...: WER reports into $exp_dir/decode/NAME
decode() {
  local name=$1 script=$2 exp=$3 sets=$4
  shift 4
  # shellcheck disable=SC2086
  $python "$recipes/$script" --exp-dir "$exp" --epoch "$epoch" --avg 1 \
    --use-averaged-model 0 $data_flags --max-duration "$decode_max_duration" \
    $model_flags --num-workers 0 \
    --test-sets "$sets" --res-dir "$(fresh_tmp "$exp_dir/decode/$name")" "$@"
  publish "$exp_dir/decode/$name"
}

A_TEST="A=synth_a_cuts_test.jsonl.gz"
B_TEST="B=synth_b_cuts_test.jsonl.gz"

prepare() {
  ./prepare.sh --num-utts-a "$num_utts_a" --num-utts-b "$num_utts_b" \
    --num-dev "$num_dev" --num-test "$num_test" --vocab-size "$vocab_size" \
    --num-mel-bins "$feature_dim" --num-jobs "$num_jobs"
}
run_stage 0 prepare "$bpe" prepare

# train_base NAME [FLAGS...]: train a model on domain A into $exp_dir/NAME
# shellcheck disable=SC2086
train_base() {
  $python "$recipes/zipformer/train.py" --exp-dir "$exp_dir/$1" $data_flags \
    --train-cuts synth_a_cuts_train.jsonl.gz --valid-cuts synth_a_cuts_dev.jsonl.gz \
    --num-epochs "$base_epochs" --base-lr "$base_lr" $train_data_flags \
    $train_flags $model_flags "${@:2}"
}
run_stage 1 train_base "$exp_dir/base/epoch-$base_epochs.pt" train_base base

epoch=$base_epochs
run_stage 2 decode_base "$exp_dir/decode/base" \
  decode base zipformer/decode.py "$exp_dir/base" "$A_TEST,$B_TEST"

# finetune NAME USE_ADAPTERS LR [FLAGS...]: fine-tune the base model on domain B (the
# model of $exp_dir/$finetune_base, "base" unless set) for $finetune_epochs epochs
# shellcheck disable=SC2086
finetune() {
  $python "$recipes/zipformer_adapter/train.py" --exp-dir "$exp_dir/$1" $data_flags \
    --train-cuts synth_b_cuts_train.jsonl.gz --valid-cuts synth_b_cuts_dev.jsonl.gz \
    --num-epochs "$finetune_epochs" --base-lr "$3" $train_data_flags \
    $train_flags $model_flags \
    --do-finetune 1 --finetune-ckpt "$exp_dir/${finetune_base:-base}/epoch-$base_epochs.pt" \
    --use-adapters "$2" --adapter-dim "$adapter_dim" "${@:4}"
}
train_adapter() { finetune_epochs=$adapter_epochs finetune adapter 1 "$adapter_lr"; }
run_stage 3 train_adapter "$exp_dir/adapter/epoch-$adapter_epochs.pt" train_adapter

epoch=$adapter_epochs
run_stage 4 decode_adapter "$exp_dir/decode/adapter" \
  decode adapter zipformer_adapter/decode.py "$exp_dir/adapter" "$B_TEST" \
  --use-adapters 1 --adapter-dim "$adapter_dim"
run_stage 4 decode_adapter_off "$exp_dir/decode/adapter_off" \
  decode adapter_off zipformer_adapter/decode.py "$exp_dir/adapter" "$A_TEST,$B_TEST" \
  --use-adapters 0 --adapter-dim "$adapter_dim"

run_stage 5 train_full_ft "$exp_dir/full_ft/epoch-$finetune_epochs.pt" finetune full_ft 0 "$base_lr"
epoch=$finetune_epochs
run_stage 6 decode_full_ft "$exp_dir/decode/full_ft" \
  decode full_ft zipformer_adapter/decode.py "$exp_dir/full_ft" "$A_TEST,$B_TEST" \
  --use-adapters 0

# shellcheck disable=SC2086
export_onnx() {
  $python "$recipes/zipformer_adapter/export-onnx.py" --exp-dir "$exp_dir/adapter" \
    --epoch "$adapter_epochs" --avg 1 --use-averaged-model 0 \
    --tokens "data/lang_bpe_$vocab_size/tokens.txt" $model_flags \
    --use-adapters 1 --adapter-dim "$adapter_dim"
}
run_stage 7 export_onnx "$exp_dir/adapter/encoder-epoch-$adapter_epochs-avg-1.onnx" \
  export_onnx

# onnx_decode NAME SUFFIX: WER of the exported model (fp32 or int8) on domain B
onnx_decode() {
  local tag="epoch-$adapter_epochs-avg-1" d="$exp_dir/adapter"
  $python "$recipes/zipformer_adapter/onnx_decode.py" \
    --encoder-model-filename "$d/encoder-$tag$2.onnx" \
    --decoder-model-filename "$d/decoder-$tag$2.onnx" \
    --joiner-model-filename "$d/joiner-$tag$2.onnx" \
    --tokens "data/lang_bpe_$vocab_size/tokens.txt" --manifest-dir data/fbank \
    --max-duration "$decode_max_duration" --test-sets "$B_TEST" \
    --res-dir "$(fresh_tmp "$exp_dir/decode/$1")"
  publish "$exp_dir/decode/$1"
}
run_stage 8 decode_onnx "$exp_dir/decode/onnx" onnx_decode onnx ""
run_stage 8 decode_onnx_int8 "$exp_dir/decode/onnx_int8" onnx_decode onnx_int8 .int8

sherpa_decode() {
  local tag="epoch-$adapter_epochs-avg-1" d="$exp_dir/adapter"
  $python local/sherpa_onnx_decode.py --encoder "$d/encoder-$tag.onnx" \
    --decoder "$d/decoder-$tag.onnx" --joiner "$d/joiner-$tag.onnx" \
    --tokens "data/lang_bpe_$vocab_size/tokens.txt" \
    --cuts data/fbank/synth_b_cuts_test.jsonl.gz --test-set B \
    --max-duration "$decode_max_duration" \
    --res-dir "$(fresh_tmp "$exp_dir/decode/sherpa_onnx")"
  publish "$exp_dir/decode/sherpa_onnx"
}
run_stage 9 decode_sherpa_onnx "$exp_dir/decode/sherpa_onnx" sherpa_decode

# ------------------------------------------------ extra systems (--extra-systems 1)
epoch=$adapter_epochs
if [ "$extra_systems" -eq 1 ]; then
  # shellcheck disable=SC2086
  train_lora() {
    $python "$recipes/zipformer_lora/finetune.py" --exp-dir "$exp_dir/lora" $data_flags \
      --train-cuts synth_b_cuts_train.jsonl.gz --valid-cuts synth_b_cuts_dev.jsonl.gz \
      --num-epochs "$adapter_epochs" --base-lr "$lora_lr" $train_data_flags \
      $train_flags $model_flags \
      --do-finetune 1 --finetune-ckpt "$exp_dir/base/epoch-$base_epochs.pt" \
      --use-lora 1 --lora-r "$lora_r" --adapter-targets "$lora_targets" \
      --lora-min-rms "$lora_min_rms"
  }
  run_stage 10 train_lora "$exp_dir/lora/epoch-$adapter_epochs.pt" train_lora
  run_stage 11 decode_lora "$exp_dir/decode/lora" \
    decode lora zipformer_lora/decode.py "$exp_dir/lora" "$B_TEST" --use-lora 1
  run_stage 11 decode_lora_off "$exp_dir/decode/lora_off" \
    decode lora_off zipformer_lora/decode.py "$exp_dir/lora" "$A_TEST" --use-lora 0

  # shellcheck disable=SC2086
  train_adapter_dj() {
    finetune_epochs=$dj_epochs finetune adapter_dj 1 "$adapter_lr" \
      --adapter-dim "$dj_adapter_dim" --adapter-targets encoder,decoder,joiner
  }
  run_stage 12 train_adapter_dj "$exp_dir/adapter_dj/epoch-$dj_epochs.pt" train_adapter_dj
  epoch=$dj_epochs
  run_stage 13 decode_adapter_dj "$exp_dir/decode/adapter_dj" \
    decode adapter_dj zipformer_adapter/decode.py "$exp_dir/adapter_dj" "$B_TEST" \
    --use-adapters 1
  run_stage 13 decode_adapter_dj_off "$exp_dir/decode/adapter_dj_off" \
    decode adapter_dj_off zipformer_adapter/decode.py "$exp_dir/adapter_dj" "$A_TEST" \
    --use-adapters 0
  epoch=$adapter_epochs

  # the adapter model on B with modified beam search, without and with biasing towards
  # the words of B's vocabulary that A's lacks
  decode_biased() {
    local words="$exp_dir/b_only_words.txt"
    LC_ALL=C comm -13 <(LC_ALL=C sort -u data/manifests/synth_a_vocab.txt) \
      <(LC_ALL=C sort -u data/manifests/synth_b_vocab.txt) > "$words.tmp"
    mv "$words.tmp" "$words"
    local beam="--decoding-method modified_beam_search --beam-size 4 --use-adapters 1"
    # shellcheck disable=SC2086
    decode adapter_beam zipformer_adapter/decode.py "$exp_dir/adapter" "$B_TEST" $beam
    # shellcheck disable=SC2086
    decode adapter_biased zipformer_adapter/decode.py "$exp_dir/adapter" "$B_TEST" $beam \
      --context-file "$words" --context-score "$context_score"
  }
  run_stage 14 decode_biased "$exp_dir/decode/adapter_biased" decode_biased
fi

# ------------------------------------------------ streaming systems (--streaming 1)
if [ "$streaming" -eq 1 ]; then
  # shellcheck disable=SC2086
  run_stage 16 train_causal_base "$exp_dir/causal_base/epoch-$base_epochs.pt" \
    train_base causal_base $causal_flags

  # shellcheck disable=SC2086
  train_causal_adapter() {
    finetune_base=causal_base finetune_epochs=$adapter_epochs \
      finetune causal_adapter 1 "$adapter_lr" $causal_flags
  }
  run_stage 17 train_causal_adapter "$exp_dir/causal_adapter/epoch-$adapter_epochs.pt" \
    train_causal_adapter

  # stream_decode NAME USE_ADAPTERS: streaming_decode.py of the causal adapter model
  stream_decode() {
    local name=$1
    # shellcheck disable=SC2086
    $python "$recipes/zipformer_adapter/streaming_decode.py" \
      --exp-dir "$exp_dir/causal_adapter" --epoch "$adapter_epochs" --avg 1 \
      --use-averaged-model 0 $data_flags $model_flags --causal 1 \
      --chunk-size "$stream_chunk" --left-context-frames "$stream_left_context" \
      --num-decode-streams 200 --num-workers 0 --test-sets "$A_TEST,$B_TEST" \
      --use-adapters "$2" --adapter-dim "$adapter_dim" \
      --res-dir "$(fresh_tmp "$exp_dir/decode/$name")"
    publish "$exp_dir/decode/$name"
  }
  run_stage 18 decode_streaming "$exp_dir/decode/streaming" stream_decode streaming 1
  run_stage 18 decode_streaming_off "$exp_dir/decode/streaming_off" \
    stream_decode streaming_off 0
fi

if [ "$stop_stage" -ge 20 ]; then
  log "Stage 20: report"
  $python local/make_report.py --exp-dir "$exp_dir" --vocab-dir data/manifests
fi
