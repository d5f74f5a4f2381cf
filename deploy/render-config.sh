#!/usr/bin/env bash
# Render config.yaml from the server's .env at deploy time.
#   deploy/render-config.sh [ENV_FILE [OUT]]     defaults: /opt/azaion-training/.env, config.yaml beside it
# Refuses a .env that others can read (it holds the secrets: mode 640 or tighter). `azaion config render`
# validates every variable and names each missing or invalid one (exit 2). The .env is parsed by azaion,
# not sourced by the shell, so a password holding $ or ` stays as written and nothing in it is executed.
set -euo pipefail

env_file=${1:-/opt/azaion-training/.env}
out=${2:-$(dirname -- "$env_file")/config.yaml}
azaion=${AZAION_BIN:-$(command -v azaion || echo /opt/azaion-training/.venv/bin/azaion)}

fail() { echo "render-config: error: $*" >&2; exit 2; }

[[ -f $env_file ]] || fail "$env_file not found: create it from .env.example (chmod 640, owner root, group deploy)"
mode=$(stat -c %a -- "$env_file")
# Allowed bits: owner read/write, group read. Anything else (group write, any bit for others, execute) is refused.
if (( 8#$mode & 8#7137 )); then
    fail "$env_file has mode $mode but holds secrets: it must be 640 or tighter. Run: chmod 640 '$env_file'"
fi
owner=$(stat -c %U:%G -- "$env_file")
# A warning, not an error: a development checkout is owned by its developer.
[[ $owner == root:deploy ]] || echo "render-config: warning: $env_file is owned by $owner, expected root:deploy" \
    "(the secrets' owner is root, the services read them through group deploy). Run: chown root:deploy '$env_file'" >&2
[[ -x $azaion ]] || fail "azaion CLI not found at $azaion: install the package, or set AZAION_BIN"

"$azaion" config render --env-file "$env_file" --out "$out"
# Same rule as the .env: the services' group may read config.yaml, nobody else.
chgrp --reference="$env_file" -- "$out"
chmod 640 -- "$out"
"$azaion" --config "$out" config check >/dev/null
echo "render-config: $out rendered from $env_file (mode 640, group $(stat -c %G -- "$out"))"
