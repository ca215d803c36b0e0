#!/usr/bin/env bash
# The plain approach watcher is compared with: a shell loop of curl calls, serially.
#
# usage: baseline.sh HUB_URL SERVICE ACCEPT MODE < lines of "repository tag"
#   MODE per-tag:        a token request and a HEAD for every tag (what a loop over
#                        images does when each line may name another repository)
#   MODE per-repository: a token request only when the repository changes
# Prints one "repository:tag digest" line per tag. One curl process per request,
# no other process per tag, so the loop is not slowed by anything but curl.
set -euo pipefail

hub=$1
service=$2
accept=$3
mode=$4
token=
token_repository=

while read -r repository tag; do
  if [[ $mode == per-tag || $repository != "$token_repository" ]]; then
    body=$(curl -sS --fail "$hub/token?service=$service&scope=repository:$repository:pull")
    if [[ ! $body =~ \"token\":\ *\"([^\"]+)\" ]]; then
      echo "baseline: no token in the answer for $repository: $body" >&2
      exit 1
    fi
    token=${BASH_REMATCH[1]}
    token_repository=$repository
  fi

  digest=$(curl -sS --fail -I -o /dev/null \
    -H "Accept: $accept" -H "Authorization: Bearer $token" \
    -w '%header{docker-content-digest}' \
    "$hub/v2/$repository/manifests/$tag")
  echo "$repository:$tag $digest"
done
