#!/usr/bin/env bash
# Your own recordings in one command: adapters fine-tuned on your data, on top of a frozen
# pretrained Zipformer, with a report of the WER of the base model and of the adapters on
# your test set. Stages whose outputs exist are skipped, so an interrupted run resumes;
# every variable below is also an option (--train-csv, --num-epochs, ...).
#
# Usage (paths absolute or relative to the current folder):
#   egs/custom/ASR/run.sh --train-csv train.csv [--test-csv test.csv] \
#     --finetune-ckpt icefall-asr-librispeech-zipformer-2023-05-15/exp/pretrained.pt \
#     --bpe-model icefall-asr-librispeech-zipformer-2023-05-15/data/lang_bpe_500/bpe.model \
#     [--model-flags "--num-encoder-layers ..."] [--exp-dir DIR]
#
# --train-csv/--test-csv take a CSV or TSV with a header naming path and text (optional
# speaker, id; paths absolute or relative to the CSV's folder), a Kaldi data directory
# (wav.scp, text, optional segments), a folder of audio files with same-named .txt
# transcripts, or lhotse manifests. Without --test-csv, --test-share of the training
# recordings is held out (seeded by --seed).
#
# Stages (outputs under --exp-dir):
#   0 prepare        check and normalise (bad rows listed in data/bad_rows.tsv and left out,
#                    audio converted to 16 kHz mono, <unk> share checked), lhotse manifests
#   1 features       fbank, 80 bins unless --num-mel-bins (data/fbank)
#   2 train_adapter  zipformer_adapter/train.py --do-finetune 1 --use-adapters 1 (adapter/)
#   3 decode_*       the test set with the base model, adapters on, adapters off (decode/)
#   4 export_onnx    zipformer_adapter/export-onnx.py (adapter/*.onnx, fp32 and int8)
#   5 decode_sherpa_onnx*  the exported model in sherpa-onnx, from the audio
#   6 report         report.md, report.json, wer.png (the final step; fails without results)
set -eou pipefail

stage=0
stop_stage=100
train_csv=""          # training data (any of the forms above)
test_csv=""           # test data; empty: a held-out share of the training data
train_name=""         # the sets' names in the report; default: the file or folder names
test_name=""
test_share=0.1        # without --test-csv: share of the training recordings held out
finetune_ckpt=""      # the base model (icefall's pretrained.pt, or this project's epoch-N.pt)
bpe_model=""          # the base model's BPE model
trust_checkpoint=0    # 1: accept a checkpoint that needs full unpickling (icefall's epoch-N.pt)
exp_dir=""            # default: egs/custom/ASR/exp
# model flags of the base model: empty takes those the checkpoint stores (this project's
# checkpoints), or icefall's published LibriSpeech Zipformer (icefall's pretrained.pt)
model_flags=""
adapter_dim=16
num_epochs=10
base_lr=0.045
max_duration=300      # seconds of audio per training batch
decode_max_duration=300
seed=42
world_size=1          # GPUs (DDP)
use_fp16=0
train_flags=""        # more zipformer_adapter/train.py flags
decoding_method=greedy_search
# the data checks
min_seconds=1.0       # shorter training utterances are left out (training's lower limit)
max_seconds=20.0      # longer utterances are left out (training's upper limit)
skip_bad_rows=1       # 0: a bad row stops the run
normalize_text=1      # transcripts to the BPE model's form (case, punctuation)
max_unk_share=0.01    # stop when more of the BPE tokens are <unk>; 1 accepts any share
num_jobs=2            # feature extraction processes
num_mel_bins=80       # fbank bins: the base model's --feature-dim (80 for icefall's models)
python=${PYTHON:-python3}

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../shared/parse_options.sh"
. "$here/../../shared/stages.sh"  # log, run_stage, fresh_tmp, publish
recipes=$here/../../librispeech/ASR

if [ -z "$train_csv" ] || [ -z "$finetune_ckpt" ] || [ -z "$bpe_model" ]; then
  echo "$(basename "$0"): error: --train-csv, --finetune-ckpt and --bpe-model are required" >&2
  exit 1
fi
exp_dir=$(realpath -m "${exp_dir:-$here/exp}")
data=$exp_dir/data
mkdir -p "$exp_dir"

# set_name PATH: a report name from a file or folder name (train.csv -> train)
set_name() {
  local b
  b=$(basename "${1%/}")
  b=${b%%.*}
  echo "${b//[^A-Za-z0-9_.-]/_}"
}
train_name=$(set_name "${train_name:-$train_csv}")
if [ -n "$test_csv" ]; then
  test_name=$(set_name "${test_name:-$test_csv}")
else
  test_name=$(set_name "${test_name:-$train_name-heldout}")
fi
[ "$test_name" != "$train_name" ] || test_name="$test_name-test"

prepare() {
  $python "$here/local/prepare_data.py" --train "$train_csv" ${test_csv:+--test "$test_csv"} \
    --train-name "$train_name" --test-name "$test_name" --bpe-model "$bpe_model" \
    --out-dir "$data" --test-share "$test_share" --seed "$seed" \
    --min-seconds "$min_seconds" --max-seconds "$max_seconds" \
    --skip-bad-rows "$skip_bad_rows" --normalize-text "$normalize_text" \
    --max-unk-share "$max_unk_share"
}
run_stage 0 prepare "$data/prepare.json" prepare

features() {
  $python "$here/local/compute_fbank_custom.py" --manifest-dir "$data/manifests" \
    --output-dir "$data/fbank" --num-jobs "$num_jobs" --progress-bar 0 \
    --num-mel-bins "$num_mel_bins"
}
run_stage 1 features "$data/fbank/custom_cuts_test.jsonl.gz" features

data_flags="--manifest-dir $data/fbank --bpe-model $bpe_model --trust-checkpoint $trust_checkpoint"
# shellcheck disable=SC2086
train_adapter() {
  $python "$recipes/zipformer_adapter/train.py" --exp-dir "$exp_dir/adapter" $data_flags \
    --train-cuts custom_cuts_train.jsonl.gz --valid-cuts custom_cuts_test.jsonl.gz \
    --do-finetune 1 --use-adapters 1 --adapter-dim "$adapter_dim" \
    --finetune-ckpt "$(realpath "$finetune_ckpt")" --num-epochs "$num_epochs" \
    --base-lr "$base_lr" --max-duration "$max_duration" --seed "$seed" \
    --world-size "$world_size" --use-fp16 "$use_fp16" --enable-musan 0 \
    --scale-schedule 1 --max-unk-share "$max_unk_share" --overwrite 1 \
    $model_flags $train_flags
}
run_stage 2 train_adapter "$exp_dir/adapter/epoch-$num_epochs.pt" train_adapter

# decode NAME SCRIPT EXP EPOCH EXTRA...: WER of the test set into $exp_dir/decode/NAME
# shellcheck disable=SC2086
decode() {
  local name=$1 script=$2 exp=$3 epoch=$4
  shift 4
  $python "$recipes/$script" --exp-dir "$exp" --epoch "$epoch" --avg 1 \
    --use-averaged-model 0 $data_flags --max-duration "$decode_max_duration" \
    --decoding-method "$decoding_method" $model_flags \
    --test-sets "$test_name=custom_cuts_test.jsonl.gz" \
    --res-dir "$(fresh_tmp "$exp_dir/decode/$name")" "$@"
  publish "$exp_dir/decode/$name"
}
# The base model as icefall decodes a pretrained.pt: linked as epoch-99.pt of a folder.
mkdir -p "$exp_dir/base"
ln -sfn "$(realpath "$finetune_ckpt")" "$exp_dir/base/epoch-99.pt"
run_stage 3 decode_base "$exp_dir/decode/base" \
  decode base zipformer/decode.py "$exp_dir/base" 99 --use-adapters 0
run_stage 3 decode_adapter "$exp_dir/decode/adapter" \
  decode adapter zipformer_adapter/decode.py "$exp_dir/adapter" "$num_epochs" --use-adapters 1
run_stage 3 decode_adapter_off "$exp_dir/decode/adapter_off" \
  decode adapter_off zipformer_adapter/decode.py "$exp_dir/adapter" "$num_epochs" \
  --use-adapters 0

tag=epoch-$num_epochs-avg-1
# shellcheck disable=SC2086
export_onnx() {
  $python "$recipes/zipformer_adapter/export-onnx.py" --exp-dir "$exp_dir/adapter" \
    --epoch "$num_epochs" --avg 1 --use-averaged-model 0 --tokens "$data/tokens.txt" \
    --use-adapters 1 --trust-checkpoint "$trust_checkpoint" $model_flags
}
run_stage 4 export_onnx "$exp_dir/adapter/encoder-$tag.int8.onnx" export_onnx

# sherpa_decode NAME SUFFIX: the exported model (fp32 or int8) in sherpa-onnx
sherpa_decode() {
  local d="$exp_dir/adapter"
  $python "$here/local/sherpa_onnx_decode.py" --encoder "$d/encoder-$tag$2.onnx" \
    --decoder "$d/decoder-$tag$2.onnx" --joiner "$d/joiner-$tag$2.onnx" \
    --tokens "$data/tokens.txt" --cuts "$data/fbank/custom_cuts_test.jsonl.gz" \
    --test-set "$test_name" --max-duration "$decode_max_duration" \
    --res-dir "$(fresh_tmp "$exp_dir/decode/$1")"
  publish "$exp_dir/decode/$1"
}
run_stage 5 decode_sherpa_onnx "$exp_dir/decode/sherpa_onnx" sherpa_decode sherpa_onnx ""
run_stage 5 decode_sherpa_onnx_int8 "$exp_dir/decode/sherpa_onnx_int8" \
  sherpa_decode sherpa_onnx_int8 .int8

if [ "$stop_stage" -ge 6 ]; then
  log "Stage 6: report"
  $python "$here/local/make_report.py" --exp-dir "$exp_dir"
fi
