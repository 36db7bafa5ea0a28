#!/bin/sh
# Build the jkg kernel image without a registry: a Debian root filesystem from
# the package mirror (debootstrap), Python packages from PyPI into a venv, the
# gateway_provisioners kernel launcher installed by its own tool, an
# unprivileged user, then `docker import`.  The same recipe as ./Dockerfile.
#
#   contrib/kernel-image/build-debootstrap.sh TAG [MIRROR]
#
# Needs root, debootstrap, and DOCKER_HOST (or the default socket) naming the
# engine that gets the image.  The host's CA bundle is copied in so pip works
# behind a TLS-inspecting proxy, and removed again before the import.
set -eu
tag=${1:?usage: build-debootstrap.sh TAG [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
suite=bookworm
# Keep these in step with the Dockerfile and with the gateway's own versions.
gp_version=${GP_VERSION:-0.5.0}
python_packages="ipykernel>=6.29,<7 pycryptodomex gateway_provisioners==$gp_version"
docker=${DOCKER:-docker}

rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/jkg-kernel-rootfs.XXXXXX")
cleanup() { umount "$rootfs/proc" 2>/dev/null || true; rm -rf "$rootfs"; }
trap cleanup EXIT INT TERM

debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$rootfs" "$mirror"
bundle=/etc/ssl/certs/ca-certificates.crt
mkdir -p "$rootfs/etc/ssl/certs"
if [ -f "$bundle" ]; then cp "$bundle" "$rootfs/tmp/host-ca.crt"; else : > "$rootfs/tmp/host-ca.crt"; fi

# An unprivileged user (uid 1000, group users/100, the provisioners' defaults)
# and everything else, inside the new root with a clean environment.
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHON_PACKAGES="$python_packages" /bin/sh -eu -c '
  useradd --uid 1000 --gid 100 --create-home --shell /bin/bash jovyan
  python3 -m venv /opt/kernel
  /opt/kernel/bin/pip install --quiet $PYTHON_PACKAGES
  /opt/kernel/bin/jupyter-image-bootstrap install --languages Python
  chmod 0755 /usr/local/bin/bootstrap-kernel.sh && chmod -R a+rX /usr/local/bin/kernel-launchers
  rm -f /tmp/host-ca.crt
  rm -rf /var/cache/apt/archives/*.deb /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
         /usr/share/locale/* /root/.cache
  find /opt/kernel -name __pycache__ -prune -exec rm -rf {} +
'
# The launcher starts ipykernel through `python`: the venv comes first on PATH.
tar -C "$rootfs" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* -c . | "$docker" import \
    --change 'ENV PATH=/opt/kernel/bin:/usr/local/bin:/usr/bin:/bin' \
    --change 'ENV KERNEL_LAUNCHERS_DIR=/usr/local/bin/kernel-launchers' \
    --change 'USER 1000:100' --change 'WORKDIR /home/jovyan' --change 'ENV HOME=/home/jovyan' \
    --change 'CMD ["/usr/local/bin/bootstrap-kernel.sh"]' \
    - "$tag"
