#!/usr/bin/env bash
# Builds example/busybox:1 from Debian's busybox-static without a registry: a tiny rootfs, `docker import`.
set -euo pipefail
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"
mkdir -p "$root"/{bin,etc,tmp,www}
cp /bin/busybox "$root/bin/busybox"
for applet in sh httpd sleep cat echo ls; do ln -s busybox "$root/bin/$applet"; done
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$root/etc/passwd"
echo '<h1>served by the reconciler</h1>' > "$root/www/index.html"
tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' - example/busybox:1
