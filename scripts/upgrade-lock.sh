#!/usr/bin/env bash
# Moves requirements.lock to the newest versions pyproject.toml allows and runs the fast tests
# against them in a throwaway venv, so the next break in a dependency is found by us first, not by
# a user (CI installs the lock, so it never sees a new release). Not part of CI.
#   scripts/upgrade-lock.sh            upgrade every package, test, keep the new lock if the tests pass
#   scripts/upgrade-lock.sh --relock   re-resolve after a pyproject.toml change, keeping the pins it can
# The lock is made by uv (`uv pip compile --universal --generate-hashes`): one resolution for every
# platform and Python the project supports, every file's sha256, in the requirements format plain
# pip installs with --require-hashes, so users and CI need nothing but pip. llama-cpp-python is left
# out: setup.sh installs it from the sdist edgebench pins by sha256 (harness/runtimes/source.py).
set -euo pipefail
cd "$(dirname "$0")/.."

upgrade=(--upgrade)
[ "${1:-}" = "--relock" ] && upgrade=()
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/python" -m pip install -q --disable-pip-version-check "uv==0.13.9"

new="$tools/requirements.lock"
[ "${#upgrade[@]}" = 0 ] && cp requirements.lock "$new"
"$tools/venv/bin/uv" pip compile pyproject.toml --extra test --extra openvino --universal --python-version 3.11 \
  --generate-hashes --no-emit-package llama-cpp-python --custom-compile-command scripts/upgrade-lock.sh \
  "${upgrade[@]}" -o "$new" --quiet
echo "upgrade-lock: changes:"
diff <(grep -E '^[a-z0-9].*==' requirements.lock) <(grep -E '^[a-z0-9].*==' "$new") | grep -E '^[<>]' || echo "  (none)"

rm -rf .venv-upgrade
EDGEBENCH_VENV=.venv-upgrade EDGEBENCH_LOCK="$new" scripts/setup.sh --test
if .venv-upgrade/bin/python -m pytest -q -x -m "not slow"; then
  cp "$new" requirements.lock
  echo "upgrade-lock: the fast tests pass with the new versions: requirements.lock updated (commit it; CI runs the slow tests)"
else
  echo "upgrade-lock: the fast tests FAIL with the new versions above; requirements.lock is unchanged" >&2
  exit 1
fi
