#!/usr/bin/env bash
# Installs what edgebench needs on a fresh Debian/Ubuntu machine, into ./.venv, at the versions
# requirements.lock pins (what CI tested).
#   scripts/setup.sh          the tool: a C++ toolchain (llama.cpp is compiled on the first run), Python deps
#   scripts/setup.sh --test   also the system packages the tests drive for real:
#                             adb, openssh-server, qemu-user-static, g++-aarch64-linux-gnu, chromium,
#                             postgresql and redis-server (the tests start throwaway servers of their own),
#                             glslc, spirv-headers, libvulkan-dev and mesa-vulkan-drivers (the host-vulkan runtime runs on
#                             lavapipe, Mesa's CPU Vulkan device); where the system's Vulkan headers are older
#                             than llama.cpp needs (Debian 12), Debian 13's libvulkan-dev is fetched with apt
#                             and unpacked into the cache, where the host-vulkan target finds it;
#                             where nvcc is on PATH but its toolkit has no cuBLAS (NVIDIA's PyPI wheels), the
#                             locked nvidia-cublas wheel (scripts/cuda-cublas.lock) is unpacked into the cache
#                             for the host-cuda target
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
  command -v glslc >/dev/null || need+=(glslc)
  [ -f /usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake ] || need+=(spirv-headers)
  [ -f /usr/include/vulkan/vulkan_core.h ] || need+=(libvulkan-dev)
  compgen -G '/usr/share/vulkan/icd.d/lvp_icd.*.json' >/dev/null || need+=(mesa-vulkan-drivers libvulkan1)
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

venv=${EDGEBENCH_VENV:-.venv}     # scripts/upgrade-lock.sh points these at a throwaway venv and a new lock
lock=${EDGEBENCH_LOCK:-requirements.lock}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# Exactly what CI tested: every package at its locked version, checked against its hashes
# (requirements.lock is made by uv; scripts/upgrade-lock.sh remakes it). The test tools are in it too.
"${pip[@]}" install -q --require-hashes --no-deps -r "$lock"
# llama-cpp-python's Python part only (LLAMA_BUILD=OFF, seconds instead of ~8 min): the pyllama engine
# loads the host runtime's libllama, which edgebench builds once for llama-bench too. It comes from the
# pinned sdist edgebench fetches (sha256-checked) for that build, so the two are one download. Not from
# or into pip's wheel cache: a cached wheel is keyed by the sdist alone, and this lib-less one must not
# reach another project's `pip install llama-cpp-python`.
sdist=$("$venv/bin/python" -c 'from harness.runtimes.source import pinned_sdist; print(pinned_sdist())')
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; from harness.runtimes.source import PINNED
sys.exit(m.version("llama-cpp-python") != PINNED.version)' 2>/dev/null; then
  echo "setup: installing llama-cpp-python's Python part (its llama.cpp comes from the host runtime edgebench builds)"
  CMAKE_ARGS="-DLLAMA_BUILD=OFF" "${pip[@]}" install -q --no-cache-dir --no-deps "$sdist"
fi
"${pip[@]}" install -q --no-deps -e .
"${pip[@]}" check

# Vulkan headers new enough for the pinned llama.cpp (VK_EXT_layer_settings), for hosts whose own are
# older: Debian 13's libvulkan-dev, downloaded with apt from a source list of our own (the system's
# sources and installed packages stay as they are) and unpacked, not installed, into the cache.
# Where that fails (no route to the Debian archive), setup goes on: the host-vulkan tests skip, saying why.
fetch_vulkan_headers() {
  local vk_dir apt_dir deb version
  vk_dir=$("$venv/bin/python" -c 'from harness.runtimes.vulkan import fallback_headers_dir; print(fallback_headers_dir())') || return 1
  apt_dir="$vk_dir/.apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" || return 1
  echo "deb http://deb.debian.org/debian trixie main" > "$apt_dir/sources.list"
  local apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir" -o "APT::Get::List-Cleanup=0"
                  -o "APT::Sandbox::User=root")  # the cache is private to us: _apt cannot write there
  echo "setup: system Vulkan headers too old for llama.cpp; fetching Debian 13's libvulkan-dev into $vk_dir"
  apt-get "${apt_opts[@]}" update -qq || return 1
  (cd "$apt_dir" && rm -f libvulkan-dev_*.deb && apt-get "${apt_opts[@]}" download -qq libvulkan-dev/trixie) || return 1
  deb=$(ls "$apt_dir"/libvulkan-dev_*.deb) || return 1
  version=$(dpkg-deb -f "$deb" Version) || return 1
  rm -rf "${vk_dir:?}/$version" && dpkg-deb -x "$deb" "$vk_dir/$version" || return 1
  "$venv/bin/python" -c "$vk_check"
}
if [ "$want_tests" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  vk_check='from harness.runtimes.vulkan import headers_status; import sys; sys.exit(headers_status() is not None)'
  if ! "$venv/bin/python" -c "$vk_check"; then
    fetch_vulkan_headers || echo "setup: could not get Vulkan headers new enough for llama.cpp; the host-vulkan tests will skip, saying why" >&2
  fi
fi
# cuBLAS for the host-cuda compile test where nvcc's toolkit has none: NVIDIA's wheel from PyPI, at the
# version and hashes scripts/cuda-cublas.lock pins, unpacked (not installed) into the cache. Where that
# fails, setup goes on: the host-cuda test skips, saying why.
fetch_cuda_cublas() {
  local dir scratch wheel version
  dir=$("$venv/bin/python" -c 'from harness.runtimes.cuda import fallback_dir; print(fallback_dir())') || return 1
  scratch=$(mktemp -d) || return 1
  echo "setup: the CUDA toolkit has no cuBLAS; fetching NVIDIA's nvidia-cublas wheel (scripts/cuda-cublas.lock) into $dir"
  "${pip[@]}" download -q --no-deps --only-binary=:all: --require-hashes -r scripts/cuda-cublas.lock -d "$scratch" || { rm -rf "$scratch"; return 1; }
  wheel=$(ls "$scratch"/nvidia_cublas-*.whl) || { rm -rf "$scratch"; return 1; }
  version=$(basename "$wheel" | cut -d- -f2)
  # unpacked beside its final place under a hidden name, then renamed: an interrupted setup leaves no half a cuBLAS
  mkdir -p "$dir" && rm -rf "${dir:?}/.$version.partial" && "$venv/bin/python" -m zipfile -e "$wheel" "$dir/.$version.partial" \
    && rm -rf "${dir:?}/$version" && mv "$dir/.$version.partial" "$dir/$version" || { rm -rf "$scratch"; return 1; }
  rm -rf "$scratch"
  "$venv/bin/python" -c "$cublas_check"
}
if [ "$want_tests" = 1 ]; then
  cublas_check='from harness.runtimes.cuda import missing_cublas; import sys; sys.exit(missing_cublas() is not None)'
  if ! "$venv/bin/python" -c "$cublas_check"; then
    fetch_cuda_cublas || echo "setup: could not get cuBLAS for the CUDA toolkit; the host-cuda test will skip, saying why" >&2
  fi
fi
echo "setup: ready ($venv)"
