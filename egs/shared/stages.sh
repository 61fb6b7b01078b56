#!/usr/bin/env bash
# Sourced by the recipes' run.sh scripts (after parse_options.sh): resumable stages.
#
#   log MESSAGE...                 a time-stamped line naming the calling script and line
#   run_stage N NAME OUTPUT CMD... runs CMD unless stage N is outside --stage/--stop-stage or
#                                  OUTPUT exists; records its seconds in
#                                  $exp_dir/stage_seconds.tsv (NAME<TAB>seconds)
#   fresh_tmp DIR                  an empty DIR.tmp for a stage to write into (printed)
#   publish DIR                    renames the finished DIR.tmp to DIR
#
# A stage that writes a folder writes DIR.tmp and publishes it when done, so an interrupted
# stage leaves only DIR.tmp and runs again on the next run. Needs $stage, $stop_stage and
# $exp_dir.

log() {
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

run_stage() {
  local n=$1 name=$2 output=$3
  shift 3
  if [ "$stage" -gt "$n" ] || [ "$stop_stage" -lt "$n" ]; then return; fi
  if [ -e "$output" ]; then
    log "Stage $n ($name): $output exists, skipping"
    return
  fi
  log "Stage $n: $name"
  local start=$SECONDS
  "$@"
  local seconds=$((SECONDS - start))
  touch "$exp_dir/stage_seconds.tsv"
  grep -v "^$name	" "$exp_dir/stage_seconds.tsv" > "$exp_dir/stage_seconds.tsv.tmp" || true
  printf '%s\t%s\n' "$name" "$seconds" >> "$exp_dir/stage_seconds.tsv.tmp"
  mv "$exp_dir/stage_seconds.tsv.tmp" "$exp_dir/stage_seconds.tsv"
}

fresh_tmp() {
  rm -rf "$1.tmp"
  echo "$1.tmp"
}

publish() {
  rm -rf "$1"
  mv "$1.tmp" "$1"
}
