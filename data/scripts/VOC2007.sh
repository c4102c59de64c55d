#!/bin/sh
# PASCAL VOC2007 trainval and test into <directory>/VOCdevkit/VOC2007 (default directory: ~/data).
# Usage: sh data/scripts/VOC2007.sh [directory]
set -eu
. "$(dirname "$0")/_fetch.sh"
fetch_and_unpack "${1:-$HOME/data}" \
  http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar \
  http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar
