#!/usr/bin/env bash
# CI's package test (as root; with CI=true an rkt-mds already installed is
# removed first, elsewhere it is refused):
# builds the package, installs it, runs the installed binary, reads its man
# page, asks bash for its completions, removes it, and checks that nothing
# is left but the state directory. Prints one "N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
# Installed, that is: a package removed but not purged ("config-files",
# kept for its postrm's purge) is not in the way and `dpkg -s` would say 0.
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' rkt-mds 2>/dev/null)" = installed ]; }
if installed; then
  # A CI machine may keep what an earlier run installed (one cut off between
  # install and removal); there it is ours to remove. Anywhere else it is an
  # operator's install, and this test leaves it alone.
  if [ "${CI:-}" = true ]; then
    echo "test-deb: rkt-mds is already installed (an earlier run's?); removing it first"
    dpkg -r rkt-mds >/dev/null
  else
    echo "test-deb: rkt-mds is already installed here; not touching it (CI=true removes it first)" >&2
    exit 1
  fi
fi
# A state dir from before this test may hold a node's keys: outside CI the
# purge check (which deletes it) runs only when this test made it.
state_was_here=false; [ -e /var/lib/rkt-mds ] && state_was_here=true
deb=$(dist/build-deb.sh | tail -n 1)
# Whatever happens from here, the package does not stay installed.
trap 'installed && dpkg -r rkt-mds >/dev/null 2>&1 || true' EXIT
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
check "removal leaves it removed (config-files at most)" sh -c '! dpkg-query -W -f="\${db:Status-Status}" rkt-mds | grep -qx installed'
if [ "$state_was_here" = false ] || [ "${CI:-}" = true ]; then
  dpkg -P rkt-mds >/dev/null
  check "purge removes the state dir" test ! -e /var/lib/rkt-mds
else
  echo "test-deb: /var/lib/rkt-mds was here before this test; purge not tried"
fi
[ -z "$left" ] || echo "test-deb: left behind: $left" >&2
echo "test-deb: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
