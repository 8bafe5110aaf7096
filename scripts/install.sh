#!/usr/bin/env bash
# `make install`: qtls-server as a Linux service.
#
#   sudo make install                         # the real thing: user, directories, venv, unit...
#   make install DESTDIR=/tmp/root            # staged tree for packaging: nothing outside it is
#                                             # touched, no user is created, nothing is chowned
#
# Environment (make passes its variables of the same names):
#   PREFIX=/usr/local           qtls-server and qproxy links go to $PREFIX/bin
#   DESTDIR=                    staging root
#   QPROXY_VENV_DIR=/opt/qproxy the service's own virtualenv (built from this checkout)
#   SYSTEMD_UNIT_DIR=/etc/systemd/system
#   PYTHON=/usr/bin/python3     interpreter for the venv (>= 3.11): the system's, never one in a
#                               home directory (pyenv, ~/.local), which the unit's
#                               ProtectHome=yes hides from the service
#   QPROXY_SKIP_VENV=1          skip the venv (slow: builds and downloads); for tests
#
# Owners and modes are those of the deployment guide: /etc/qtls and its config/ and certs/ are
# root:qtls 0750 (files 0640), state and logs qtls:qtls 0750. secrets/ is 0700 as in the guide
# but owned by qtls, or the service could not read its file keys at all. Every path installed is
# listed with its intended owner and mode in $PREFIX/share/qproxy/install-manifest (what a
# package build applies under DESTDIR, and what `make uninstall` removes).
# Existing configuration files are never overwritten.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
VENV_DIR=${QPROXY_VENV_DIR:-/opt/qproxy}
UNIT_DIR=${SYSTEMD_UNIT_DIR:-/etc/systemd/system}
PYTHON=${PYTHON:-/usr/bin/python3}
SKIP_VENV=${QPROXY_SKIP_VENV:-0}
SHARE_DIR=$PREFIX/share/qproxy
MANIFEST=$SHARE_DIR/install-manifest
APPARMOR_NAME=opt.qproxy.bin.qtls-server

for dir in "$PREFIX" "$VENV_DIR" "$UNIT_DIR"; do
  case $dir in /*) ;; *) echo "install: $dir is not an absolute path" >&2; exit 2 ;; esac
done
if [ -n "$DESTDIR" ]; then
  DESTDIR=$(mkdir -p "$DESTDIR" && cd "$DESTDIR" && pwd)
  staged=1
else
  staged=0
  if [ "$(id -u)" -ne 0 ]; then
    echo "install: run as root (sudo make install), or stage with DESTDIR=..." >&2
    exit 1
  fi
fi

manifest_lines=()
# record KIND MODE OWNER:GROUP PATH [keep]
record() { manifest_lines+=("$*"); }

# own PATH OWNER:GROUP: apply the owner on a real install; a staged one only records it.
own() {
  if [ "$staged" -eq 0 ]; then chown -h "$2" "$DESTDIR$1"; fi
}

dir() {  # dir PATH MODE OWNER:GROUP
  install -d -m "$2" "$DESTDIR$1"
  chmod "$2" "$DESTDIR$1"
  own "$1" "$3"
  record dir "$2" "$3" "$1"
}

file() {  # file SRC DEST MODE OWNER:GROUP [keep]: keep = never overwrite an existing file
  if [ "${5:-}" = keep ] && [ -e "$DESTDIR$2" ]; then
    echo "  kept existing $2 (the new example is $1)"
  else
    install -m "$3" "$1" "$DESTDIR$2"
    own "$2" "$4"
  fi
  record file "$3" "$4" "$2" ${5:+"$5"}
}

# substitute: the shipped files name the default paths; follow PREFIX and QPROXY_VENV_DIR.
substitute() {
  sed -e "s#/usr/local/bin/qtls-server#$PREFIX/bin/qtls-server#g" \
      -e "s#/usr/local/bin/qproxy#$PREFIX/bin/qproxy#g" \
      -e "s#/opt/qproxy#$VENV_DIR#g" "$1"
}

generated() {  # generated SRC DEST MODE OWNER:GROUP
  local tmp
  tmp=$(mktemp)
  substitute "$1" > "$tmp"
  install -m "$3" "$tmp" "$DESTDIR$2"
  rm -f "$tmp"
  own "$2" "$4"
  record file "$3" "$4" "$2"
}

# --- the qtls user and group ------------------------------------------------------------------
if [ "$staged" -eq 0 ]; then
  getent group qtls >/dev/null || groupadd --system qtls
  if ! getent passwd qtls >/dev/null; then
    nologin=$(command -v nologin || echo /usr/sbin/nologin)
    useradd --system --gid qtls --home-dir /var/lib/qtls --no-create-home \
      --shell "$nologin" --comment "qtls-server" qtls
    echo "  created system user and group qtls"
  fi
fi

# --- directories --------------------------------------------------------------------------------
echo "installing qtls-server (PREFIX=$PREFIX${DESTDIR:+, DESTDIR=$DESTDIR})"
dir /etc/qtls 0750 root:qtls
dir /etc/qtls/config 0750 root:qtls
dir /etc/qtls/certs 0750 root:qtls
dir /etc/qtls/secrets 0700 qtls:qtls
dir /var/lib/qtls 0750 qtls:qtls
dir /var/log/qtls 0750 qtls:qtls
for d in "$PREFIX/bin" "$SHARE_DIR" "$SHARE_DIR/selinux" "$UNIT_DIR" /etc/logrotate.d \
         /etc/audit/rules.d /etc/sysctl.d /etc/apparmor.d "$PREFIX/share/man/man1" \
         "$PREFIX/share/man/man8"; do
  install -d -m 0755 "$DESTDIR$d"
done

# --- configuration examples (never overwritten) -------------------------------------------------
file "$src/etc/qtls/config/server.json" /etc/qtls/config/server.json 0640 root:qtls keep
file "$src/etc/qtls/config/client.json" /etc/qtls/config/client.json 0640 root:qtls keep
# The unit's LoadCredential=hsm-pin needs its source file; only systemd (root) reads it.
if [ ! -e "$DESTDIR/etc/qtls/secrets/hsm-pin" ]; then
  install -m 0600 /dev/null "$DESTDIR/etc/qtls/secrets/hsm-pin"
  own /etc/qtls/secrets/hsm-pin root:root
fi
record file 0600 root:root /etc/qtls/secrets/hsm-pin keep

# --- the program: its own venv, built from this checkout ----------------------------------------
# The venv's python links to this interpreter for good: one under /home or /root (pyenv,
# ~/.local) is invisible to the service (ProtectHome=yes) and it would not start.
check_python() {
  local where
  if ! where=$("$PYTHON" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11); print(sys.base_prefix)' 2>/dev/null); then
    echo "install: $PYTHON is not a Python >= 3.11 with the venv module (Debian: apt-get install python3-venv; or PYTHON=...)" >&2
    exit 1
  fi
  for path in "$(realpath -m "$(command -v "$PYTHON" || echo "$PYTHON")")" "$where"; do
    case $path in
      /home/*|/root/*|/run/user/*)
        echo "install: $PYTHON lives in $path, a home directory the service cannot see (ProtectHome=yes); use the system's Python: PYTHON=/usr/bin/python3" >&2
        exit 1 ;;
    esac
  done
}

if [ "$SKIP_VENV" = 1 ]; then
  echo "  QPROXY_SKIP_VENV=1: not building $VENV_DIR"
else
  check_python
  venv=$DESTDIR$VENV_DIR
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    --upgrade "$src"
  if [ "$staged" -eq 1 ]; then
    # A venv remembers where it was made: point its scripts at the final location.
    grep -rlI --null "$venv" "$venv/bin" "$venv/pyvenv.cfg" 2>/dev/null \
      | xargs -0 -r sed -i "s#$venv#$VENV_DIR#g"
  fi
  "$venv/bin/python" -c 'import qproxy' || { echo "install: the venv cannot import qproxy" >&2; exit 1; }
fi
record venv 0755 root:root "$VENV_DIR"
for name in qtls-server qproxy; do
  ln -sfn "$VENV_DIR/bin/$name" "$DESTDIR$PREFIX/bin/$name"
  record link 0777 root:root "$PREFIX/bin/$name"
done

# --- service files ------------------------------------------------------------------------------
generated "$src/systemd/qtls-server.service" "$UNIT_DIR/qtls-server.service" 0644 root:root
file "$src/etc/logrotate.d/qtls" /etc/logrotate.d/qtls 0644 root:root
generated "$src/etc/audit/rules.d/qtls.rules" /etc/audit/rules.d/qtls.rules 0640 root:root
file "$src/etc/sysctl.d/99-qtls.conf" /etc/sysctl.d/99-qtls.conf 0644 root:root
generated "$src/apparmor/$APPARMOR_NAME" "/etc/apparmor.d/$APPARMOR_NAME" 0644 root:root
for name in qtls.te qtls.if; do
  file "$src/selinux/$name" "$SHARE_DIR/selinux/$name" 0644 root:root
done
generated "$src/selinux/qtls.fc" "$SHARE_DIR/selinux/qtls.fc" 0644 root:root
# Man pages, generated from the click commands (make man) and committed.
file "$src/man/qtls-server.8" "$PREFIX/share/man/man8/qtls-server.8" 0644 root:root
file "$src/man/qproxy.1" "$PREFIX/share/man/man1/qproxy.1" 0644 root:root

# --- manifest -----------------------------------------------------------------------------------
record file 0644 root:root "$MANIFEST"
{
  echo "# qproxy install manifest: KIND MODE OWNER:GROUP PATH [keep]"
  echo "# PREFIX=$PREFIX QPROXY_VENV_DIR=$VENV_DIR SYSTEMD_UNIT_DIR=$UNIT_DIR"
  printf '%s\n' "${manifest_lines[@]}"
} > "$DESTDIR$MANIFEST"
chmod 0644 "$DESTDIR$MANIFEST"

if [ "$staged" -eq 0 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi

cat <<EOT
done. Next (see README, "Production deployment"):
  certificates to /etc/qtls/certs, file keys to /etc/qtls/secrets (qtls:qtls 0600),
  the HSM PIN to /etc/qtls/secrets/hsm-pin, then edit /etc/qtls/config/server.json
  $PREFIX/bin/qtls-server --config /etc/qtls/config/server.json --test-config
  sysctl -p /etc/sysctl.d/99-qtls.conf; augenrules --load
  apparmor_parser -r /etc/apparmor.d/$APPARMOR_NAME    (AppArmor hosts)
  systemctl enable --now qtls-server
EOT
