#!/bin/sh
# Shared by the download scripts: fetch "$@" (URLs) into $TARGET and unpack them there.
# DRY_RUN set to anything but empty or 0 (1, yes, true...) prints what would be fetched and unpacked, and touches
# nothing.
set -eu

fetch_and_unpack() {
  local target="$1"; shift
  if [ -n "${DRY_RUN:-}" ] && [ "${DRY_RUN}" != "0" ]; then
    for url in "$@"; do echo "would fetch $url into $target"; done
    return 0
  fi
  mkdir -p "$target"
  cd "$target"
  for url in "$@"; do
    local file="${url##*/}"
    if [ ! -f "$file" ]; then
      echo "downloading $url"
      if command -v curl >/dev/null 2>&1; then curl -fL --retry 3 -o "$file.part" "$url"; else wget -O "$file.part" "$url"; fi
      mv "$file.part" "$file"
    fi
    echo "unpacking $file"
    case "$file" in
      *.tar) tar -xf "$file" ;;
      *.zip) unzip -q -o "$file" ;;
      *) echo "error: do not know how to unpack $file" >&2; exit 1 ;;
    esac
  done
  echo "done: $target"
}
