# Sourced by the scripts that install what they need from Debian when it is missing:
#   apt_install PACKAGE...   apt-get update + install, quietly, as root (sudo when not root)
# Fails with a clear message when neither root nor sudo is available.

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "need root (or sudo) to run: $*" >&2
    exit 1
  fi
}

apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
