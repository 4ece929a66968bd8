# Sourced by run-example.sh and test.sh: what building weir needs beyond Rust,
# installed with apt when missing (as root, or with sudo):
#   - libclang-dev: bindgen generates the RocksDB bindings with it;
#   - libssl-dev, libsasl2-dev, libcurl4-openssl-dev: librdkafka's TLS, SASL
#     (SCRAM, GSSAPI) and OAUTHBEARER/OIDC (without curl's headers the build
#     silently drops OIDC).
# The build directory defaults to ~/.cache/weir/target so it survives clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}"
export PATH="$HOME/.cargo/bin:$PATH"
JOBS="${CARGO_BUILD_JOBS:-2}"

weir_missing=()
for pkg in libclang-dev libssl-dev libsasl2-dev libcurl4-openssl-dev pkg-config; do
  dpkg -s "$pkg" >/dev/null 2>&1 || weir_missing+=("$pkg")
done
if ((${#weir_missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${weir_missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${weir_missing[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    echo "installing ${weir_missing[*]} (sudo)" >&2
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${weir_missing[@]}" >/dev/null
  else
    echo "warning: missing ${weir_missing[*]} (apt-get install them); the build needs them" >&2
  fi
fi
unset weir_missing
