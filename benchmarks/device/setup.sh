# Sourced by run_a.sh / run_b.sh on the device machine (see prepare.sh).
# Sourced at the start of every device run: GL libraries, carried wheels, paths (once per machine).
if [ ! -d /tmp/site/moderngl ]; then
  for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/pkg:/tmp/site:$PWD PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/xdg
if ! python3 -c "import moderngl; moderngl.create_standalone_context(require=430, backend='egl')" 2>/dev/null; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
ln -sfn ../shaders perro_pastor/shaders
mkdir -p /usr/share/common-licenses tests/assets/vocab && cp .dev/common/GPL-3 /usr/share/common-licenses/
pp() { python3 -m perro_pastor.cli "$@"; }
