#!/usr/bin/env bash
# CI's package test (as root, on a machine where rkt-mds is not installed):
# builds the package, installs it, runs the installed binary, reads its man
# page, asks bash for its completions, removes it, and checks that nothing
# is left but the state directory. Prints one "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
if dpkg -s rkt-mds >/dev/null 2>&1; then
  echo "test-deb: rkt-mds is already installed here; not touching it" >&2
  exit 1
fi
deb=$(dist/build-deb.sh | tail -n 1)
passed=0 failed=0
check() {
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "test-deb: ok: $what"
  else failed=$((failed + 1)); echo "test-deb: FAILED: $what" >&2; fi
}
files=$(dpkg-deb --contents "$deb" | awk '{print $NF}' | sed 's|^\./|/|' | grep -v '/$')
dpkg -i "$deb" >/dev/null
check "installed binary prints its version" sh -c '/usr/bin/rkt-mds --version | grep -q "^rkt-mds Version: "'
check "man page of rkt-mds" sh -c 'MANPAGER=cat man rkt-mds 2>/dev/null | grep -q "rkt-mds"'
check "man page of rkt-mds-serve" sh -c 'MANPAGER=cat man rkt-mds-serve 2>/dev/null | grep -q "metrics-address"'
check "state dir is 0700 root" sh -c '[ "$(stat -c %a:%U /var/lib/rkt-mds)" = 700:root ]'
check "systemd units installed" test -f /lib/systemd/system/rkt-metadata.service -a -f /lib/systemd/system/rkt-metadata.socket
check "bash completes subcommands" bash -c '
  source /usr/share/bash-completion/completions/rkt-mds
  COMP_WORDS=(rkt-mds ser); COMP_CWORD=1; COMP_LINE="rkt-mds ser"; COMP_POINT=${#COMP_LINE}
  _rkt__mds rkt-mds ser rkt-mds
  printf "%s\n" "${COMPREPLY[@]}" | grep -qx serve'
check "zsh and fish completions installed" test -s /usr/share/zsh/vendor-completions/_rkt-mds -a -s /usr/share/fish/vendor_completions.d/rkt-mds.fish
check "docs installed" test -f /usr/share/doc/rkt-mds/README.md
dpkg -r rkt-mds >/dev/null
left=$(for f in $files; do [ -e "$f" ] && echo "$f"; done || true)
check "removal leaves none of the package's files" test -z "$left"
check "removal leaves the state dir" test -d /var/lib/rkt-mds
[ -z "$left" ] || echo "test-deb: left behind: $left" >&2
echo "test-deb: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
