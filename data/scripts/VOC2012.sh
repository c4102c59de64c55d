#!/bin/sh
# PASCAL VOC2012 trainval into <directory>/VOCdevkit/VOC2012 (default directory: ~/data).
# Usage: sh data/scripts/VOC2012.sh [directory]
set -eu
. "$(dirname "$0")/_fetch.sh"
fetch_and_unpack "${1:-$HOME/data}" \
  http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar
