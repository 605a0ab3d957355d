#!/usr/bin/env bash
# Fetch, extract and verify SCUT-FBP5500 (5,500 face images + the official label and split files).
#
#   scripts/get_scut_fbp5500.sh data/scut-fbp5500 [MIRROR_GIT_DIR]
#
# The data set's authors (Liang et al., South China University of Technology, HCIILAB) release it
# for non-commercial research only: "The SCUT-FBP5500 database can be only used for
# non-commercial research purpose." Keep it in the git-ignored data/ folder; never commit it.
# The files come from the public GitHub mirror Poogee/FacialBeautyPrediction at a fixed commit
# (about 160 MB to clone; give MIRROR_GIT_DIR to reuse a copy you have) and are checked against
# scripts/scut-fbp5500.sha256 (label files one by one, the images as one digest).
set -euo pipefail
dest=${1:?usage: get_scut_fbp5500.sh DEST [MIRROR_GIT_DIR]}
mirror=${2:-}
commit=e6164dd9b959fca775545b9d63418712d9815f97
sums=$(cd "$(dirname "$0")" && pwd)/scut-fbp5500.sha256
if [ -z "$mirror" ]; then
    mirror=$(mktemp -d "${TMPDIR:-/tmp}/scut-mirror.XXXXXX")
    trap 'rm -rf "$mirror"' EXIT
    git clone --quiet --bare https://github.com/Poogee/FacialBeautyPrediction.git "$mirror"
fi
tmp="$dest.tmp.$$"
rm -rf "$tmp" && mkdir -p "$tmp"
git --git-dir="$mirror" archive "$commit" Images train_test_files | tar -x -C "$tmp"
(
    cd "$tmp"
    grep -v -e '^#' -e '  Images/\*\.jpg$' "$sums" | sha256sum --quiet -c -
    want=$(grep '  Images/\*\.jpg$' "$sums" | cut -d' ' -f1)
    got=$(sha256sum Images/*.jpg | LC_ALL=C sort -k2 | sha256sum | cut -d' ' -f1)
    [ "$want" = "$got" ] || { echo "get_scut_fbp5500.sh: the images differ from the release (digest $got)" >&2; exit 1; }
)
rm -rf "$dest" && mv "$tmp" "$dest"
echo "SCUT-FBP5500 ready in $dest: $(ls "$dest/Images" | wc -l) images, labels in $dest/train_test_files"
