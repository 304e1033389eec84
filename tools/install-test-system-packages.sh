#!/usr/bin/env bash
# The Debian packages the test suite drives for real: Chromium (the web pages), Xvfb with Mesa and
# Qt's X11 libraries (the napari viewer), PostgreSQL (the multi-worker platform tests start a
# throw-away cluster), SLURM (tests/distributed/test_cluster.py starts a single-node slurmctld + slurmd on
# 127.0.0.1 without munge and runs one real dask-jobqueue job through it). Installs only what is missing; where it may not install (no root, no apt), it says so and the tests that need a missing package fail under CI=true.
set -u
packages=(
  chromium
  xvfb xauth libgl1-mesa-dri libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xinput0 libxcb-xfixes0
  libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1
  postgresql
  slurm-wlm
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages for the tests: ${missing[*]}"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  echo "could not install ${missing[*]}: the tests that need them will fail under CI=true and skip otherwise"
fi
exit 0
