#!/usr/bin/env bash
# Installs what edgebench needs on a fresh Debian/Ubuntu machine, into ./.venv.
#   scripts/setup.sh          the tool: a C++ toolchain and cmake (llama.cpp is compiled), Python deps
#   scripts/setup.sh --test   also the test extras and the system packages the tests drive for real:
#                             adb, openssh-server, qemu-user-static, g++-aarch64-linux-gnu, chromium,
#                             postgresql and redis-server (the tests start throwaway servers of their own)
# System packages are installed with apt-get only when missing and only when we are root;
# otherwise the missing ones are listed (tests that need them skip and say why).
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

need=()
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [ "$want_tests" = 1 ]; then
  command -v adb >/dev/null || need+=(adb)
  command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
  command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
  command -v chromium >/dev/null || need+=(chromium)
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
  command -v redis-server >/dev/null || need+=(redis-server)
fi
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "setup: missing system packages (install them, or tests needing them will skip): ${need[*]}" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
extra=""
[ "$want_tests" = 1 ] && extra="[test]"
# llama-cpp-python compiles from source the first time (~5 min); pip caches the wheel after that.
# Its llama.cpp is built native like the host runtime, so it gets the runtime's AMX-off flags
# where native code would hold llama.cpp's crashing AMX kernels (see no_amx_flags in
# harness/runtimes/targets.py; stdlib only, so it runs before anything is installed).
no_amx=$(python3 -S -c 'from harness.runtimes.targets import no_amx_flags; print(";".join(no_amx_flags()))')
[ -n "$no_amx" ] && export SKBUILD_CMAKE_ARGS="$no_amx"
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q -e ".${extra}"
if [ -n "$no_amx" ] && .venv/bin/python -c 'import sys, llama_cpp; sys.exit(b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info())'; then
  echo "setup: the llama-cpp-python wheel pip had cached holds llama.cpp's AMX kernels (they crash); building it without them"
  "${pip[@]}" cache remove -q 'llama_cpp_python*' || true
  "${pip[@]}" install -q --force-reinstall --no-deps "llama-cpp-python==$(.venv/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)')"
fi
echo "setup: ready (.venv)"
