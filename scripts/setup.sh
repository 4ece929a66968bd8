# Sourced by run-example.sh and test.sh: what building weir needs beyond Rust.
#   - libclang-dev (apt): bindgen generates the RocksDB bindings with it.
# The build directory defaults to ~/.cache/weir/target so it survives clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
export PATH="$HOME/.cargo/bin:$PATH"
JOBS="${CARGO_BUILD_JOBS:-2}"

if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing libclang-dev" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    echo "installing libclang-dev (sudo)" >&2
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
  else
    echo "warning: libclang-dev is not installed (apt-get install libclang-dev); the RocksDB build needs it" >&2
  fi
fi
