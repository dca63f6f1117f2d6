#!/usr/bin/env bash
# A walk-through of the tokencache CLI on a scratch store: issue, validate, list, revoke,
# rotate, purge, delete, inspect. Every command is echoed before it runs; the store is deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --release --features cli
bin="$PWD/target/release/tokencache"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export TOKENCACHE_STORE="$scratch/tokens.snap"

exec 2>&1  # one ordered stream: command, its output, its messages
show() { printf '\n$ %s\n' "$*"; }

show "tokencache issue ci-bot --scope read --scope write --expires-in 30d"
token="$("$bin" issue ci-bot --scope read --scope write --expires-in 30d)"
echo "$token"
id="${token:3:8}"

show 'printf %s "$token" | tokencache validate --scope write   # exit 0: valid'
printf %s "$token" | "$bin" validate --scope write

show 'printf %s "${token%?}X" | tokencache validate            # one character changed: exit 1'
printf %s "${token%?}X" | "$bin" validate || echo "(exit $?)"

show "tokencache issue deploy-bot"
deploy="$("$bin" issue deploy-bot)"
deploy_id="${deploy:3:8}"

show "tokencache list"
"$bin" list

show "tokencache revoke $id"
"$bin" revoke "$id"

show 'printf %s "$token" | tokencache validate --json           # exit 1: revoked'
printf %s "$token" | "$bin" validate --json || echo "(exit $?)"

show "tokencache list --json"
"$bin" list --json

show "tokencache rotate $deploy_id --grace 1h    # stdout: the new token only"
"$bin" rotate "$deploy_id" --grace 1h >/dev/null

show "tokencache purge --older-than 0s          # deletes the revoked ci-bot"
"$bin" purge --older-than 0s

show "tokencache delete $deploy_id"
"$bin" delete "$deploy_id"

show "tokencache list"
"$bin" list

show "tokencache inspect"
"$bin" inspect
