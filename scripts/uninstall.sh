#!/usr/bin/env bash
# `make uninstall`: remove what `make install` added, except the configuration, certificates,
# keys and logs (/etc/qtls, /var/log/qtls) and the qtls user (files left behind stay owned by
# it). /var/lib/qtls goes only if empty. Same PREFIX / DESTDIR / QPROXY_VENV_DIR /
# SYSTEMD_UNIT_DIR as the install; the install manifest says what was installed.
set -euo pipefail

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
VENV_DIR=${QPROXY_VENV_DIR:-/opt/qproxy}
UNIT_DIR=${SYSTEMD_UNIT_DIR:-/etc/systemd/system}
SHARE_DIR=$PREFIX/share/qproxy
MANIFEST=$SHARE_DIR/install-manifest
APPARMOR_NAME=opt.qproxy.bin.qtls-server
staged=0
[ -n "$DESTDIR" ] && staged=1
if [ "$staged" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  echo "uninstall: run as root (sudo make uninstall), or give the DESTDIR of a staged install" >&2
  exit 1
fi

# KIND PATH [keep] of every installed item: from the manifest, else the defaults.
entries=()
if [ -f "$DESTDIR$MANIFEST" ]; then
  while read -r kind _mode _owner path keep; do
    case $kind in ''|'#'*) continue ;; esac
    entries+=("$kind $path ${keep:-}")
  done < "$DESTDIR$MANIFEST"
else
  entries=("venv $VENV_DIR" "link $PREFIX/bin/qtls-server" "link $PREFIX/bin/qproxy"
           "file $UNIT_DIR/qtls-server.service" "file /etc/logrotate.d/qtls"
           "file /etc/audit/rules.d/qtls.rules" "file /etc/sysctl.d/99-qtls.conf"
           "file /etc/apparmor.d/$APPARMOR_NAME" "file $SHARE_DIR/selinux/qtls.te"
           "file $SHARE_DIR/selinux/qtls.if" "file $SHARE_DIR/selinux/qtls.fc"
           "file $PREFIX/share/man/man8/qtls-server.8" "file $PREFIX/share/man/man1/qproxy.1"
           "dir /var/lib/qtls")
fi

if [ "$staged" -eq 0 ]; then
  if [ -d /run/systemd/system ] && systemctl cat qtls-server.service >/dev/null 2>&1; then
    systemctl disable --now qtls-server.service || true
  fi
  if [ -r /sys/kernel/security/apparmor/profiles ] \
     && grep -q '^qtls-server ' /sys/kernel/security/apparmor/profiles \
     && [ -f "/etc/apparmor.d/$APPARMOR_NAME" ]; then
    apparmor_parser -R "/etc/apparmor.d/$APPARMOR_NAME" || true
  fi
fi

echo "removing qtls-server${DESTDIR:+ from $DESTDIR}"
for entry in "${entries[@]}"; do
  read -r kind path keep <<<"$entry"
  target=$DESTDIR$path
  [ "$keep" = keep ] && continue
  case $kind in
    venv) rm -rf "$target" ;;
    link) if [ -L "$target" ]; then rm -f "$target"; fi ;;
    file) rm -f "$target" ;;
    dir)  if [ "$path" = /var/lib/qtls ]; then rmdir "$target" 2>/dev/null || true; fi ;;
  esac
done
rmdir "$DESTDIR$SHARE_DIR/selinux" "$DESTDIR$SHARE_DIR" 2>/dev/null || true

if [ "$staged" -eq 0 ]; then
  [ -d /run/systemd/system ] && systemctl daemon-reload
  echo "kept: /etc/qtls (configuration, certificates, keys), /var/log/qtls, the qtls user."
  echo "the running kernel keeps the old audit rules and sysctl values until 'augenrules --load'"
  echo "and a reboot; a loaded SELinux module stays until 'semodule -r qtls'."
fi
