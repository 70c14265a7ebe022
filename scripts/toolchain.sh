# Makes sure the toolchain pinned in rust-toolchain.toml has its
# wasm32-unknown-unknown target (rustup installs both from the file; this
# covers machines where automatic installs are turned off).
if command -v rustup >/dev/null 2>&1; then
  rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
  rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
    || rustup target add wasm32-unknown-unknown
fi
