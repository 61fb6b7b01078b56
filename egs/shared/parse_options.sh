#!/usr/bin/env bash
# Sourced by the recipes' prepare.sh and run.sh scripts: turns "--some-name VALUE" arguments
# into assignments to the shell variable some_name, which must already be defined (with its
# default).
# An unknown option or a missing value is one clear error line and exit status 1.
while [ $# -gt 0 ]; do
  case "$1" in
    --*)
      name=${1#--}
      var=${name//-/_}
      if [ -z "${!var+set}" ]; then
        echo "$(basename "$0"): error: unknown option --$name" >&2
        exit 1
      fi
      if [ $# -lt 2 ]; then
        echo "$(basename "$0"): error: --$name needs a value" >&2
        exit 1
      fi
      printf -v "$var" '%s' "$2"
      shift 2
      ;;
    *)
      echo "$(basename "$0"): error: unexpected argument '$1'" >&2
      exit 1
      ;;
  esac
done
