#!/usr/bin/env bash
# Debian/Ubuntu packages whose tools check the Linux-service files (tests/test_packaging.py):
#   systemd             systemd-analyze verify / security --offline (the unit)
#   apparmor            apparmor_parser -Q -K (the profile; nothing is loaded)
#   selinux-policy-dev  the reference policy's module Makefile and headers (qtls.te/.fc/.if),
#   checkpolicy, semodule-utils, m4, make   with checkmodule and semodule_package behind it
#   logrotate           logrotate -d (the rotation config)
#   libaudit1           libaudit's rule parser (the audit rules; see the test for why not auditctl)
#   procps, util-linux  sysctl and unshare (the sysctl file, tried in a throw-away network namespace)
#   (package shellcheck) lints scripts/install.sh, uninstall.sh and this script
# The checks change nothing on the machine. The packages are ordinary ones: apparmor (installed
# by default on Debian and Ubuntu) enables its boot service, logrotate its daily timer.
set -euo pipefail

want=(systemd apparmor selinux-policy-dev checkpolicy semodule-utils m4 make logrotate libaudit1
      procps util-linux shellcheck)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  # Not Debian: nothing to install with, so check that the tools are there. Exiting 0 without
  # them would let the packaging checks skip (and, under CI=true, fail far from the cause).
  PATH="$PATH:/usr/sbin:/sbin"
  absent=()
  for cmd in systemd-analyze apparmor_parser checkmodule semodule_package m4 make logrotate \
             sysctl unshare shellcheck; do
    command -v "$cmd" >/dev/null || absent+=("$cmd")
  done
  [ -f /usr/share/selinux/devel/Makefile ] || absent+=("the SELinux reference policy's devel Makefile")
  { command -v ldconfig >/dev/null && ldconfig -p | grep -q 'libaudit\.so\.1'; } \
    || absent+=("libaudit.so.1")
  if [ "${#absent[@]}" -gt 0 ]; then
    echo "install-packaging-tools: not a Debian system and these are missing: ${absent[*]}" \
         "(install your system's equivalents of: ${want[*]})" >&2
    exit 1
  fi
  exit 0
fi
missing=()
for pkg in "${want[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -E "$@"; fi; }
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
